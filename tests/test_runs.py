"""Run directories: resolved config, env, outputs, metrics; reopening resumes the logs."""

from __future__ import annotations

import json

import pytest
import yaml

from personalign.config import SamplingConfig
from personalign.errors import PersonalignError
from personalign.runs import RunDir, discard_unfinished_new_runs, reset_run_tracking


def test_run_dir_writes_everything_and_resumes(tmp_path):
    run = RunDir.new(tmp_path, "demo")
    run.write_config(SamplingConfig(seed=4))
    env = run.write_env(seed=4, device="cpu")
    run.log_metrics({"loss": 1.5}, step=1)
    run.add_outputs([{"prompt": "p", "method": "base", "sample": 0, "seed": 4, "output": "o"}])
    assert yaml.safe_load((run.path / "config.yaml").read_text())["seed"] == 4
    assert json.loads((run.path / "env.json").read_text())["versions"]["torch"] == env["versions"]["torch"]
    reopened = RunDir(run.path)
    reopened.log_metrics({"loss": 1.0}, step=2)
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in lines] == [1.5, 1.0]
    assert reopened.outputs[0]["output"] == "o"
    assert not list(run.path.glob(".*.tmp"))  # atomic writes leave no temp files
    assert RunDir.new(tmp_path, "demo").path != run.path


def test_wandb_offline_tracking_beside_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "tracked", wandb_project="personalign-tests")
    run.write_config({"seed": 1})
    run.log_metrics({"loss": 0.25}, step=1)
    run.finish()
    offline_runs = list((tmp_path / "tracked" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].glob("*.wandb"))
    assert json.loads((run.path / "metrics.jsonl").read_text())["loss"] == 0.25


def _cfg(**kw):
    return {"methods": ["base"], "n_prompts": 2, "out": None, "resume": False, "model": {"device": "cpu"}, **kw}


def test_open_refuses_user_folders_and_other_commands_runs(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own file\n")
    with pytest.raises(PersonalignError, match="folder of other files"):
        RunDir.open(mine, "compare", _cfg())
    assert (mine / "config.yaml").read_text() == "my own file\n"  # untouched
    other = RunDir.open(tmp_path / "p", "personalize", _cfg())
    with pytest.raises(PersonalignError, match="a `personalize` run dir"):
        RunDir.open(other.path, "compare", _cfg())
    with pytest.raises(PersonalignError, match="is a `personalize` run, not a `compare` run"):
        RunDir.open(other.path, "compare", _cfg(), resume=True)
    (tmp_path / "empty").mkdir()
    assert RunDir.open(tmp_path / "empty", "compare", _cfg()).path == tmp_path / "empty"  # empty folders are fine


def test_same_command_needs_resume_and_equal_settings(tmp_path):
    run = RunDir.open(tmp_path / "r", "compare", _cfg())
    run.add_outputs([{"method": "base", "output": "x"}])
    (run.path / "checkpoints" / "step-000002").mkdir(parents=True)
    with pytest.raises(PersonalignError, match="checkpoints and results; add --resume"):
        RunDir.open(run.path, "compare", _cfg())
    with pytest.raises(PersonalignError, match=r"settings differ .*: methods, n_prompts"):
        RunDir.open(run.path, "compare", _cfg(methods=["base", "prompt"], n_prompts=1), resume=True)
    # where and how long to run may change: out, device
    again = RunDir.open(run.path, "compare", _cfg(out=str(run.path), model={"device": "cuda"}), resume=True)
    assert again.resumed and again.outputs == [{"method": "base", "output": "x"}]
    info = json.loads((run.path / "run.json").read_text())
    assert info["command"] == "compare" and len(info["resumed_utc"]) == 1 and info["status"] == "running"
    with pytest.raises(PersonalignError, match="holds no run to resume"):
        RunDir.open(tmp_path / "new", "compare", _cfg(), resume=True)


def test_resumed_steps_replace_the_replayed_ones(tmp_path):
    run = RunDir(tmp_path / "r")
    for step in (1, 2, 3, 4):  # the earlier invocation logged 4 steps, its last checkpoint was at step 2
        run.log_metrics({"phase": "sft", "loss": 10.0 - step}, step=step)
    run.log_metrics({"phase": "eval", "eval_loss": 5.0}, step=4)
    resumed = RunDir(tmp_path / "r")
    for step in (3, 4, 5):
        resumed.log_metrics({"phase": "sft", "loss": 1.0 * step}, step=step)
    resumed.log_metrics({"phase": "sft_done", "steps": 5})
    resumed.log_metrics({"phase": "sft_done", "steps": 5})
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    sft = [(r["step"], r["loss"]) for r in rows if r.get("phase") == "sft"]
    assert sft == [(1, 9.0), (2, 8.0), (3, 3.0), (4, 4.0), (5, 5.0)]  # each step once, the resumed values
    assert [r["eval_loss"] for r in rows if r.get("phase") == "eval"] == [5.0]  # other series untouched
    assert len([r for r in rows if r.get("phase") == "sft_done"]) == 2  # only earlier runs' rows are replaced


def test_env_records_the_device_used_not_auto(tmp_path):
    env = RunDir(tmp_path / "r").write_env(seed=0, device="auto")
    assert env["device"] in ("cpu", "cuda")


def test_failed_command_leaves_no_empty_run_dir(tmp_path):
    reset_run_tracking()
    run = RunDir.open(tmp_path / "a", "compare", _cfg())
    kept = RunDir.open(tmp_path / "b", "compare", _cfg())
    kept.add_outputs([{"output": "x"}])
    assert discard_unfinished_new_runs() == [run.path]
    assert not run.path.exists() and kept.path.is_dir()


def test_wandb_without_login_fails_before_creating_anything(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(PersonalignError, match="wandb login"):
        RunDir.open(tmp_path / "w", "compare", _cfg(), wandb_project="p")
    assert not (tmp_path / "w").exists()


def test_run_files_are_strict_json(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_json("summary.json", {"kappa": float("nan"), "ci": [float("inf"), 0.5]})
    run.log_metrics({"kappa": float("nan")})
    assert json.loads((run.path / "summary.json").read_text(), parse_constant=_reject) == {"kappa": None,
                                                                                          "ci": [None, 0.5]}
    json.loads((run.path / "metrics.jsonl").read_text(), parse_constant=_reject)


def _reject(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


def test_a_non_main_process_reads_the_run_dir_but_writes_nothing(tmp_path):
    rank0 = RunDir.open(tmp_path / "run", "personalize", {"seed": 1})
    rank0.log_metrics({"loss": 2.0}, step=1)
    before = {p: p.read_bytes() for p in rank0.path.rglob("*") if p.is_file()}
    other = RunDir.open(tmp_path / "run", "personalize", {"seed": 1}, writer=False)  # no "holds a run" refusal
    other.write_config({"seed": 2})
    other.write_env(seed=2, device="cpu")
    other.log_metrics({"loss": 1.0}, step=2)
    other.add_outputs([{"prompt": "p", "output": "o"}])
    other.write_json("summary.json", {"x": 1})
    other.mark_finished()
    assert [r["loss"] for r in other.metrics] == [2.0, 1.0]  # its own rows stay in memory (rlaif reads them)
    assert {p: p.read_bytes() for p in rank0.path.rglob("*") if p.is_file()} == before
    assert not RunDir(tmp_path / "never", writer=False).path.exists()
