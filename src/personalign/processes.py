"""Server child processes (vLLM, skyrl-tx) that start in their own process group and stop with all of it.

Both servers spawn helpers (vLLM its engine core and workers, skyrl-tx its engine): signalling only the server
left those running when it was stopped during start-up (seen here: a vLLM engine core and worker outlived a
server that timed out). So each server gets its own session, is stopped by its group's id, and is told by the
kernel to stop when the process that started it dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any


def start_group(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`command` as the leader of a new session (and process group), SIGTERMed if this process dies first."""
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent, **popen)


def stop_group(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM to the process's group (the server finishes in-flight work, then stops its helpers), SIGKILL to
    what is left of it after `timeout_s`. Also when the leader already exited: its helpers may not have."""
    pgid = process.pid  # start_new_session: the group's id is the leader's pid
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            process.poll()
            time.sleep(0.2)
        if not group_alive(pgid):
            break
    process.wait(timeout=5)


def _die_with_parent() -> None:
    """In the child (Linux): SIGTERM it when the process that started it dies, even by SIGKILL or a test-runner
    timeout, so no server outlives its owner."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def group_alive(pgid: int) -> bool:
    """Whether any member of the group still runs (a zombie leader does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-s", str(pgid)], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    return any(s and not s.startswith("Z") for s in out.split())
