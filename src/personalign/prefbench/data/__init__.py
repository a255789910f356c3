"""Data sets for prefbench, by name: `load_prefdata("dsp" | "synthetic" | "psoups" | ... | path.jsonl)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personalign.errors import DataError
from personalign.prefbench.schema import PrefData, load_schema_file

LOCAL_DATASETS = ("dsp", "synthetic")
HUB_DATASETS = ("psoups", "personal_llm", "tldr", "ultrafeedback")
DATASETS = (*LOCAL_DATASETS, *HUB_DATASETS)


def load_prefdata(
    name: str,
    data_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    synthetic: dict[str, Any] | None = None,
    max_train_per_user: int | None = None,
    max_test_per_user: int | None = None,
    seed: int = 0,
) -> PrefData:
    """Load a data set by name, or a .jsonl/.json file already in the prefbench schema.

    `data_dir` is the root of the shared data sets (DSP, tax sets); `data_path` a local copy of a hub set
    in the hub's schema. Per-user caps apply to every source (sampled with `seed`).
    """
    from personalign.prefbench.data import hub

    if name == "dsp":
        from personalign.prefbench.data.dsp import load_dsp

        data = load_dsp(data_path or data_dir)
    elif name == "synthetic":
        from personalign.prefbench.data.synthetic import make_synthetic

        data = make_synthetic(**(synthetic or {}))
    elif name in HUB_DATASETS:
        loader = {"psoups": hub.load_psoups, "personal_llm": hub.load_personal_llm, "tldr": hub.load_tldr,
                  "ultrafeedback": hub.load_ultrafeedback}[name]
        data = loader(data_path, max_train=max_train_per_user, max_test=max_test_per_user, seed=seed)
    elif name.endswith((".jsonl", ".json")):
        data = load_schema_file(name)
    else:
        raise DataError(
            f"unknown data set {name!r}; choose one of {', '.join(DATASETS)} or give a .jsonl file in the "
            "prefbench schema (user_id, prompt, chosen, rejected, split)"
        )
    if name not in HUB_DATASETS and (max_train_per_user or max_test_per_user):
        data = PrefData(data.name, hub.cap_per_user(data.pairs, max_train_per_user, max_test_per_user, seed), data.meta,
                        data.dimensions)
    data.check_splits()
    return data
