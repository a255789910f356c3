"""Progress off a terminal: periodic plain lines on stderr (not redraws or blank lines), and a final one."""

from __future__ import annotations

from personalign.progress import Progress, track


def test_plain_lines_when_stderr_is_not_a_terminal(capsys):
    assert list(track(range(5), description="judging", period_s=3600)) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err.splitlines() == ["judging: 5/5 (100%), 0 s"]  # one line, at the end
    with Progress(period_s=0) as bar:
        task = bar.add_task("sft", total=4)
        bar.update(task, completed=2, description="sft loss 1.2")
        bar.advance(task, 2)
        bar.advance(task, 1)  # past the end: nothing more
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["sft loss 1.2: 2/4 (50%), 0 s", "sft loss 1.2: 4/4 (100%), 0 s"]


def test_disabled_progress_prints_nothing(capsys):
    with Progress(disable=True, period_s=0) as bar:
        bar.advance(bar.add_task("x", total=2), 2)
    assert list(track([1, 2], disable=True)) == [1, 2]
    assert capsys.readouterr().err == ""
