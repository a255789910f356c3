"""Atomic file writes and JSONL/YAML reading with errors that name the file."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from personalign.errors import DataError

# Folders this process must not write into: the run dir, in the non-main processes of a multi-process run
# (rank 0 alone writes it). A write there is a bug, so it raises instead of racing rank 0 for the same file.
_READ_ONLY: list[Path] = []


def forbid_writes(folder: str | Path | None) -> None:
    """Make every atomic write under `folder` raise in this process (None: allow writes everywhere again)."""
    if folder is None:
        _READ_ONLY.clear()
    else:
        _READ_ONLY.append(Path(folder).resolve())


def _check_writable(path: Path) -> None:
    if _READ_ONLY:
        resolved = path.resolve()
        for root in _READ_ONLY:
            if resolved.is_relative_to(root):
                raise RuntimeError(f"{path}: this process must not write into {root}: only the main process of a "
                                   "multi-process run writes its run dir")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and a rename, so readers never see half a file."""
    path = Path(path)
    _check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Render a matplotlib figure to `path` atomically and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temp folder beside `target` to fill; on success it replaces `target` in one rename, on an
    error it is removed and `target` is left as it was."""
    target = Path(target)
    _check_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def strict_json(obj: Any) -> Any:
    """`obj` with NaN and ±inf replaced by null: JSON has no such numbers, and strict parsers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(value) for value in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return strict_json(obj.item())
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text (no NaN) of `obj`; unknown types as their string."""
    return json.dumps(strict_json(obj), indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    text = "".join(dumps(row) + "\n" for row in rows)
    return atomic_write_text(path, text)


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def read_text(path: str | Path) -> str:
    """Read a UTF-8 file (gzip-compressed when it ends in .gz), turning missing files, bad encodings and
    broken archives into one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes()).decode("utf-8")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc}); re-download or re-compress it") from None


def read_json(path: str | Path, expected: str | None = None) -> Any:
    """Parse a JSON file; bad JSON raises an error naming the file, the line and (if given) what was expected."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        hint = f"; expected {expected}" if expected else ""
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}){hint}") from None


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file; a bad line raises an error naming file and line."""
    for _, row in enumerate_jsonl(path):
        yield row


def enumerate_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) so callers validating fields can name the line."""
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
        yield lineno, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def read_yaml(path: str | Path) -> Any:
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DataError(f"{where}: invalid YAML ({problem}); fix the file at that line and column") from None
