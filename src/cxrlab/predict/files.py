"""What `cxrlab predict INPUT...` reads: files, folders (recursively) and glob patterns.

Every input becomes one or more `InputFile`s in the order given (folders and globs sorted);
an input that names nothing readable becomes one with an `error`, so the batch goes on and
the output has a row saying why.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrlab.data.imaging import is_image_file

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One file to predict, or the reason an input gave none."""

    label: str  # the path as found, for the output's `file` column
    path: Path | None = None
    error: str | None = None


def expand_inputs(inputs: Sequence[str | Path]) -> list[InputFile]:
    """Files, folders and globs as a list of files (duplicates dropped, first one kept)."""
    found: list[InputFile] = []
    for item in inputs:
        found.extend(_expand(str(item)))
    seen: set[Path] = set()
    out = []
    for entry in found:
        key = entry.path.resolve() if entry.path is not None else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out.append(entry)
    return out


def _expand(item: str) -> list[InputFile]:
    path = Path(item)
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return [InputFile(item, path)]  # named explicitly: read it even with an odd suffix
    if _GLOB_CHARS & set(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            return [InputFile(item, error=f"no file matches the pattern {item!r}")]
        return [e for m in matches for e in (_folder(Path(m)) if Path(m).is_dir() else _file(m))]
    return [InputFile(item, error=f"input not found: {item}")]


def _file(name: str) -> list[InputFile]:
    return [InputFile(name, Path(name))] if is_image_file(name) else []


def _folder(folder: Path) -> list[InputFile]:
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not files:
        return [InputFile(str(folder), error=f"folder {folder} holds no image files")]
    return [InputFile(str(p), p) for p in files]
