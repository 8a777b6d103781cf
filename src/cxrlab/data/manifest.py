"""`cxrlab-download.json`: what `cxrlab download` put into a data folder, and checked.

It lives beside Data_Entry in the data root and is rewritten (atomically) after every
archive, so an interrupted run keeps the record of what is done. Per archive it holds its
number, whether it is extracted, the names of its images, their count, and the archive's
size and SHA-256; for an archive not yet fetched, the first and last Image Index it is
expected to hold (when the sources file gives every archive's image count). `prepare` uses
it, through `missing_hint`, to say which archives hold the images it did not find.

It belongs to the data layer (prepare reads it; `cxrlab.download`, above, writes it), so it
imports nothing from `cxrlab.download`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrlab.runinfo import read_json, write_json

MANIFEST_NAME = "cxrlab-download.json"
FORMAT = 1


def manifest_path(root: str | Path) -> Path:
    return Path(root) / MANIFEST_NAME


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest in `root`, or None when there is none (or it is not ours)."""
    path = manifest_path(root)
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ValueError:
        return None  # a damaged manifest is rewritten by the next download run
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_manifest(root: str | Path, data: dict[str, Any]) -> Path:
    return write_json(manifest_path(root), {"format": FORMAT, **data})


def extracted_parts(manifest: dict[str, Any]) -> list[int]:
    return [a["part"] for a in manifest["archives"].values() if a.get("extracted")]


def missing_hint(root: str | Path, missing: Sequence[str], n_present: int) -> str | None:
    """What a prepare error should add about `missing` images of a downloaded folder.

    None when `root` has no download manifest. Otherwise names the archives not yet fetched
    that hold the missing images (or all of them when their contents are not known), the
    command that fetches them and the --drop-missing alternative.
    """
    manifest = read_manifest(root)
    if manifest is None:
        return None
    archives = manifest["archives"]
    absent = {name: a for name, a in archives.items() if not a.get("extracted")}
    needed = sorted({a["part"] for a in absent.values() if _holds_any(a, missing)})
    if not needed and not _in_extracted(archives, missing):
        needed = sorted(a["part"] for a in absent.values())
    parts = format_parts(needed)
    command = f"cxrlab download nih --to {root}"
    if needed:
        held = len(archives) - len(absent)
        return (
            f"{root} holds {held} of {len(archives)} image archives ({MANIFEST_NAME}); the"
            f" missing images are in archive(s) {parts}: fetch them with `{command} --parts"
            f" {parts}`, or pass --drop-missing to draw the cohort from the {n_present}"
            " images present"
        )
    return (
        f"images listed in {MANIFEST_NAME} as extracted are gone: run `{command}` again to"
        " check the folder and fetch what is missing"
    )


def _holds_any(archive: dict[str, Any], missing: Sequence[str]) -> bool:
    first, last = archive.get("first"), archive.get("last")
    if first is None or last is None:
        return False
    return any(first <= name <= last for name in missing)


def _in_extracted(archives: dict[str, Any], missing: Sequence[str]) -> bool:
    wanted = set(missing)
    return any(wanted.intersection(a.get("names", ())) for a in archives.values())


def format_parts(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5' (what --parts reads back)."""
    out: list[str] = []
    for k in sorted(numbers):
        if out and int(out[-1].split("-")[-1]) == k - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{k}"
        else:
            out.append(str(k))
    return ",".join(out)
