"""Server processes stop with their whole group: helpers a leader left behind, and ones that ignore SIGTERM."""

from __future__ import annotations

import subprocess
import sys

from personalign.processes import group_alive, start_group, stop_group

# A leader that starts a long-lived helper, prints its pid and exits (what a vLLM server stopped mid-start-up
# did: its engine core lived on).
LEADER = ("import subprocess, sys; h = subprocess.Popen([sys.executable, '-c', {helper!r}]); "
          "print(h.pid, flush=True)")


def _start(helper: str) -> subprocess.Popen[bytes]:
    return start_group([sys.executable, "-c", LEADER.format(helper=helper)], stdout=subprocess.PIPE)


def test_a_helper_the_leader_left_behind_is_stopped():
    process = _start("import time; time.sleep(120)")
    assert process.stdout is not None and int(process.stdout.readline())
    process.wait(timeout=30)
    assert group_alive(process.pid)  # the leader is gone, its helper is not
    stop_group(process, timeout_s=10)
    assert not group_alive(process.pid)


def test_a_helper_that_ignores_sigterm_is_killed_after_the_timeout():
    process = _start("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                     "print('ignoring', flush=True); time.sleep(120)")
    assert process.stdout is not None and int(process.stdout.readline())
    assert process.stdout.readline().strip() == b"ignoring"  # the helper shares the pipe
    stop_group(process, timeout_s=1)
    assert not group_alive(process.pid)
