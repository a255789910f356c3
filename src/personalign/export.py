"""`personalign export`: a trained run as a plain Hugging Face folder, a PEFT adapter, or an Ollama model.

- `merged`: LoRA merged into the base (PEFT `merge_and_unload`), safetensors, tokenizer with its chat template,
  generation config: what `transformers`, vLLM and Ollama load, generating the run's greedy tokens.
- `adapter`: the PEFT adapter with its base model recorded (`adapter_config.json` and `personalign.json`).
- `ollama`: `merged` plus a `Modelfile` (`ollama create NAME -f Modelfile`): the chat template as an Ollama
  template, and for `+prompt` runs the profile's system prompt and few-shot turns exactly as `prompt` builds them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.io import atomic_dir, atomic_write_json, atomic_write_text

EXPORT_FILE = "personalign.json"


class ExportConfig(Config):
    run: str = Field(..., description="a trained run dir (DIR or DIR+prompt)")
    out: str = Field(..., description="folder to write (replaced atomically)")
    format: Literal["merged", "adapter", "ollama"] = "merged"
    device: str = Field("cpu", description="where the merge runs")


def export_run(config: ExportConfig) -> Path:
    from personalign.methods.base import read_manifest
    from personalign.methods.spec import parse_spec

    spec = parse_spec(config.run)
    if spec.run is None:
        raise PersonalignError(f"--run {config.run}: export needs a trained run dir, not a method name")
    manifest = read_manifest(spec.run)
    out = Path(config.out)
    if out.resolve() == spec.run.resolve() or spec.run.resolve().is_relative_to(out.resolve()):
        raise PersonalignError(f"--out {out}: would replace the run itself; choose another folder")
    record = {"run": str(spec.run.resolve()), "method": manifest["method"], "format": config.format,
              "base_model": _base_path(manifest), "prompted": _prompted(spec, manifest)}
    with atomic_dir(out) as tmp:
        if config.format == "adapter":
            _write_adapter(spec.run, manifest, tmp)
        else:
            _write_merged(spec.run, config.device, tmp, manifest)
            if config.format == "ollama":
                atomic_write_text(tmp / "Modelfile", modelfile(tmp, spec.run, manifest, record["prompted"]))
        atomic_write_json(tmp / EXPORT_FILE, record)
    return out


def _base_path(manifest: dict[str, Any]) -> str:
    from personalign.backends.hf import resolve_model_path

    return resolve_model_path(manifest["model"]["model"])


def _prompted(spec: Any, manifest: dict[str, Any]) -> bool:
    return bool(spec.prompted or str(manifest["method"]).endswith("+prompt"))


def _local_adapter(run: Path, manifest: dict[str, Any]) -> Path:
    """The run's adapter folder; a Tinker run's is the copy downloaded from the service at the end of training."""
    if not manifest.get("adapter"):
        raise PersonalignError(f"{run}: a full fine-tune has no adapter; use --format merged")
    if manifest["model"].get("backend") != "tinker":
        return run / manifest["adapter"]
    if not manifest.get("local_adapter"):
        why = manifest.get("local_adapter_error", "no local copy")
        raise PersonalignError(f"{run}: this tinker run's adapter was not downloaded ({why}); export needs a local "
                               f"copy, and its weights stay on the service at {manifest['adapter']}")
    return run / manifest["local_adapter"]


def _write_adapter(run: Path, manifest: dict[str, Any], tmp: Path) -> None:
    shutil.copytree(_local_adapter(run, manifest), tmp, dirs_exist_ok=True)
    adapter_config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = _base_path(manifest)  # where PEFT finds the base to load on
    atomic_write_json(tmp / "adapter_config.json", adapter_config)


def _write_merged(run: Path, device: str, tmp: Path, manifest: dict[str, Any]) -> None:
    from personalign.methods.base import load_personalizer

    # fp32 for the merge (W + BA in full precision), saved back in the base checkpoint's own dtype.
    if manifest["model"].get("backend") == "tinker":  # the downloaded adapter on the base loaded here
        from personalign.backends.hf import HFBackend
        from personalign.config import ModelConfig

        backend: Any = HFBackend(ModelConfig(model=manifest["model"]["model"], device=device, dtype="fp32",
                                             adapter=str(_local_adapter(run, manifest))))
    else:
        backend = load_personalizer(run, device=device, dtype="fp32").backend
    model = backend.model  # type: ignore[attr-defined]
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    stored = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if stored is not None and str(stored) not in ("float32", "torch.float32"):
        import torch

        model = model.to(getattr(torch, str(stored).replace("torch.", "")))
    model.save_pretrained(tmp, safe_serialization=True)
    backend.tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]


def modelfile(folder: Path, run: Path, manifest: dict[str, Any], prompted: bool) -> str:
    """An Ollama Modelfile for the merged folder: template, stop tokens, and the profile's prompt if prompted."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = str(getattr(tokenizer, "chat_template", "") or "")
    lines = ["# ollama create NAME -f Modelfile", "FROM ."]
    if "<|im_start|>" in template:
        # ChatML, the default model's format, written as Ollama's Go template.
        go = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
              '<|im_start|>assistant\n')
        lines += [f'TEMPLATE """{go}"""', 'PARAMETER stop "<|im_end|>"']
    else:
        lines.append("# the chat template is not ChatML: Ollama reads it from tokenizer_config.json")
    if prompted:
        from personalign.methods.prompted import prompted_conversation
        from personalign.methods.prompting import PromptConfig
        from personalign.profiles import Profile

        if not manifest.get("profile"):
            raise PersonalignError(f"{run}: no profile saved in the run; a +prompt export needs it")
        prompt_config = PromptConfig.model_validate(manifest.get("config", {}).get("prompt", {}))
        profile = Profile.model_validate(manifest["profile"])
        messages = prompted_conversation(profile, prompt_config, "")[:-1]  # all but the request itself
        for message in messages:
            text = message["content"].replace('"""', '"')
            lines.append(f'SYSTEM """{text}"""' if message["role"] == "system"
                         else f'MESSAGE {message["role"]} """{text}"""')
    return "\n".join(lines) + "\n"

