"""Run directories: resolved config, env, outputs, metrics; reopening resumes the logs."""

from __future__ import annotations

import json

import yaml

from personalign.config import SamplingConfig
from personalign.runs import RunDir


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
