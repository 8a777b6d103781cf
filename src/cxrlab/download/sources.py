"""What can be downloaded: the data file (`nih.yaml`) read into `Source`, and the plan of
which files one run fetches (`--parts 1-3`, `--images N`).

The bundled `nih.yaml` is the one owner of the NIH file names, links, sizes, checksums and
image counts; `--sources FILE` reads another file of the same form (a filled-in copy, a
mirror's own list). `--base-url URL` replaces every link by `URL/<name>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cxrlab.errors import ConfigError

#: The bundled data file of the NIH release.
NIH_SOURCES = "nih.yaml"


class RemoteFile(BaseModel):
    """One file of the release; `url`, `bytes`, `sha256` are None where unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # a plain file name, never a path
    url: str | None = None
    bytes: int | None = Field(None, ge=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class Archive(RemoteFile):
    """An image archive; `images` is how many PNGs it holds (None where unknown)."""

    images: int | None = Field(None, ge=1)


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    landing_page: str
    licence: str
    metadata: list[RemoteFile]
    archives: list[Archive] = Field(min_length=1)

    def expected_ranges(self, names: Sequence[str]) -> dict[str, list[str]] | None:
        """Archive name -> the Image Index names it holds, when every count is known and
        they add up to `names` (Data_Entry's), which the archives hold in sorted order."""
        counts = [a.images for a in self.archives]
        if any(c is None for c in counts) or sum(counts) != len(names):
            return None
        ordered = sorted(names)
        out, start = {}, 0
        for archive, count in zip(self.archives, counts, strict=True):
            out[archive.name] = ordered[start : start + count]
            start += count
        return out


def load_source(path: str | Path | None = None) -> Source:
    """Read a sources file (the bundled NIH one when `path` is None)."""
    if path is None:
        text = resources.files("cxrlab.download").joinpath(NIH_SOURCES).read_text()
        where = f"the bundled {NIH_SOURCES}"
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sources file {path} does not exist")
        text, where = path.read_text(encoding="utf-8"), str(path)
    try:
        return Source.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"sources file {where} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        at = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(
            f"sources file {where}: {at}: {err['msg']} (got {err.get('input')!r});"
            f" {exc.error_count()} problem(s) in all, see the bundled {NIH_SOURCES} for the form"
        ) from exc


def url_of(file: RemoteFile, base_url: str | None) -> str | None:
    """The link to fetch `file` from: `base_url/name` for a mirror, else its own link."""
    if base_url:
        return f"{base_url.rstrip('/')}/{file.name}"
    return file.url


def parse_parts(spec: str, n_archives: int) -> list[int]:
    """'1-3' or '1,4,7-9' -> sorted 1-based archive numbers, each in 1..n_archives."""
    numbers: set[int] = set()
    for item in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not match:
            raise ConfigError(f"--parts {spec!r}: {item!r} is not a number or a range like 1-3")
        lo = int(match[1])
        hi = int(match[2]) if match[2] else lo
        if not 1 <= lo <= hi <= n_archives:
            raise ConfigError(
                f"--parts {spec!r}: {item.strip()!r} is outside 1-{n_archives} (or runs backwards)"
            )
        numbers.update(range(lo, hi + 1))
    return sorted(numbers)


def parts_for_images(source: Source, n_images: int) -> list[int]:
    """The fewest leading archives that hold at least `n_images` images (1-based)."""
    total = 0
    for number, archive in enumerate(source.archives, start=1):
        if archive.images is None:
            raise ConfigError(
                f"--images {n_images}: the image count of {archive.name} is unknown in the"
                " sources file; choose the archives with --parts instead"
            )
        total += archive.images
        if total >= n_images:
            return list(range(1, number + 1))
    raise ConfigError(
        f"--images {n_images} is more than the {total} images of all"
        f" {len(source.archives)} archives"
    )


def plan_archives(source: Source, parts: str | None, n_images: int | None) -> list[Archive]:
    """The archives one run fetches: all, `--parts`, or enough for `--images N`."""
    if parts and n_images:
        raise ConfigError("give --parts or --images, not both")
    if parts:
        numbers = parse_parts(parts, len(source.archives))
    elif n_images:
        numbers = parts_for_images(source, n_images)
    else:
        numbers = list(range(1, len(source.archives) + 1))
    return [source.archives[k - 1] for k in numbers]
