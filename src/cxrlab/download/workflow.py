"""`cxrlab download nih`: metadata and image archives -> a data root `prepare` reads.

    DIR/Data_Entry_2017_v2020.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt
    DIR/images/<Image Index>.png          (the NIH layout, see cxrlab.data.discovery)
    DIR/cxrlab-download.json              (cxrlab.data.manifest)

Order of work: fail fast on links that are unknown, fetch the metadata, read Data_Entry
(the names every archive is checked against), check free disk space, then per archive:
fetch (resumable), check size and SHA-256 where known, extract and decode every image,
record it in the manifest, delete the archive. An archive that fails a check is fetched
again once; a second failure stops with the archive's name. A finished archive is never
fetched again, so a second run transfers nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from cxrlab.config import DownloadConfig
from cxrlab.data.manifest import MANIFEST_NAME, format_parts, read_manifest, write_manifest
from cxrlab.data.metadata import (
    BBOX_PATTERNS,
    DATA_ENTRY_PATTERNS,
    find_metadata_files,
    read_data_entry,
)
from cxrlab.download.archive import BadArchive, extract_archive
from cxrlab.download.progress import TqdmProgress
from cxrlab.download.sources import (
    Archive,
    RemoteFile,
    Source,
    load_source,
    plan_archives,
    url_of,
)
from cxrlab.download.transfer import fetch, part_path, remote_size
from cxrlab.errors import ConfigError, DataError
from cxrlab.labels import IMAGE_INDEX
from cxrlab.runinfo import sha256_file

log = logging.getLogger(__name__)

IMAGES_DIR = "images"  # the NIH layout's image folder under the data root


@dataclass
class DownloadResult:
    """What one run did and what the folder holds now, for the CLI to report."""

    root: Path
    fetched: list[str] = field(default_factory=list)  # files transferred by this run
    received: int = 0  # bytes received by this run
    refetched: list[str] = field(default_factory=list)  # archives fetched again after a check
    restarted: list[str] = field(default_factory=list)  # files restarted: no HTTP Range
    parts: list[int] = field(default_factory=list)  # archives extracted (1-based), all runs
    parts_total: int = 0
    images: int = 0  # images extracted and checked, all runs
    expected_images: int = 0  # rows of Data_Entry
    manifest: Path | None = None

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.parts_total


def download_nih(
    options: DownloadConfig,
    to: str | Path,
    *,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Fetch, check and extract the NIH ChestX-ray14 files into `to` (resumable)."""
    source = load_source(options.sources)
    root = Path(to)
    root.mkdir(parents=True, exist_ok=True)
    planned = plan_archives(source, options.parts, options.images)
    job = _Job(options, source, root, TqdmProgress(enabled=progress), sleep)
    job.check_links(planned)
    job.fetch_metadata()
    job.load_entries()
    pending = [a for a in planned if not job.is_done(a)]
    job.check_space(pending)
    for archive in pending:
        job.get_archive(archive)
    job.progress.close()
    return job.finish()


class _Job:
    """One run's state: options, source, the manifest being kept, and the result."""

    def __init__(self, options: DownloadConfig, source: Source, root: Path, progress, sleep):
        self.options, self.source, self.root = options, source, root
        self.images_dir = root / IMAGES_DIR
        self.progress = progress
        self.sleep = sleep
        self.result = DownloadResult(root=root, parts_total=len(source.archives))
        old = read_manifest(root) or {}
        self.metadata: dict = old.get("metadata", {})
        self.archives: dict = {
            a.name: old.get("archives", {}).get(a.name, {}) | {"part": k}
            for k, a in enumerate(source.archives, start=1)
        }
        self.known: frozenset[str] = frozenset()
        self.present: set[str] = set()

    # ---- before any transfer ----
    def check_links(self, planned: list[Archive]) -> None:
        """ConfigError listing every file this run needs that has no link."""
        base = self.options.base_url
        needed = [f for f in self.source.metadata if self._local(f) is None]
        needed += [a for a in planned if not self.archives[a.name].get("extracted")]
        unknown = [f.name for f in needed if url_of(f, base) is None]
        if unknown:
            raise ConfigError(
                f"no link is known for {', '.join(unknown)}: pass --base-url URL of a mirror"
                f" that holds these names, or put the files into {self.root} by hand (from"
                f" {self.source.landing_page}), or give --sources FILE with their links"
            )

    def fetch_metadata(self) -> None:
        for file in self.source.metadata:
            dest = self._local(file)
            if dest is None:
                dest = self.root / file.name
                self._fetch(file, dest)
            record = self.metadata.get(file.name, {})
            if record.get("bytes") != dest.stat().st_size:  # new or replaced by hand
                record = {"bytes": dest.stat().st_size, "sha256": sha256_file(dest)}
            _check_known(file, dest, record["sha256"], DataError)
            self.metadata[file.name] = record | {"file": dest.name}

    def _local(self, file: RemoteFile) -> Path | None:
        """The metadata file in the folder: its own name, or another copy `prepare` reads
        (e.g. Data_Entry_2017.csv or a .csv.gz for Data_Entry_2017_v2020.csv)."""
        if (self.root / file.name).is_file():
            return self.root / file.name
        for patterns in (DATA_ENTRY_PATTERNS, BBOX_PATTERNS):
            if any(fnmatch(file.name, p) for p in patterns):
                found = sorted(p for pat in patterns for p in self.root.glob(pat) if p.is_file())
                return found[0] if found else None
        return None

    def load_entries(self) -> None:
        entries = read_data_entry(find_metadata_files(self.root).data_entry)
        self.known = frozenset(entries[IMAGE_INDEX])
        self.result.expected_images = len(self.known)
        ranges = self.source.expected_ranges(list(self.known)) or {}
        for name, names in ranges.items():
            self.archives[name].update(first=names[0], last=names[-1], expected=len(names))
        if self.images_dir.is_dir():
            self.present = set(os.listdir(self.images_dir))

    def is_done(self, archive: Archive) -> bool:
        """Extracted and checked by an earlier run, with every image still in place."""
        record = self.archives[archive.name]
        if not record.get("extracted"):
            return False
        gone = [n for n in record.get("names", ()) if n not in self.present]
        if gone:
            log.warning(
                "%d images of %s are gone (e.g. %s); fetching it again",
                len(gone),
                archive.name,
                gone[0],
            )
            record["extracted"] = False
        return not gone

    def check_space(self, pending: list[Archive]) -> None:
        """DataError when the disk cannot hold the pending archives and their images."""
        sizes, have = [], 0
        for archive in pending:
            size = archive.bytes or remote_size(self._url(archive), self.options.timeout)
            if size is None:
                log.info("size of %s unknown: left out of the disk-space check", archive.name)
                continue
            sizes.append(size)
            dest = self.root / archive.name
            have += dest.stat().st_size if dest.is_file() else 0
            part = part_path(dest)
            have += part.stat().st_size if part.is_file() else 0
        if not sizes:
            return
        self.progress.set_total(sum(sizes))
        # Images take about an archive's size (PNGs do not compress); while one archive is
        # extracted it sits beside its images, so the peak is all images + the largest one.
        extra = sum(sizes) if self.options.keep_archives else max(sizes)
        need = sum(sizes) + extra - have
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise DataError(
                f"not enough free disk space in {self.root}: {_gb(free)} free, about"
                f" {_gb(need)} needed for {len(sizes)} archive(s) and their images (each"
                " archive is extracted beside its images, so ~2x an archive is needed while"
                " extracting); free some space, choose another --to, or fetch fewer archives"
                " with --parts"
            )

    # ---- per archive ----
    def get_archive(self, archive: Archive) -> None:
        dest = self.root / archive.name
        for attempt in (1, 2):
            if not dest.is_file():
                self._fetch(archive, dest)
            try:
                sha = sha256_file(dest)
                _check_known(archive, dest, sha, BadArchive)
                names = extract_archive(
                    dest, self.images_dir, self.known, workers=self.options.workers
                )
            except BadArchive as exc:
                dest.unlink()
                if attempt == 2:
                    raise BadArchive(
                        f"{exc}; it was fetched again and is still bad, so the copy at"
                        f" {self._url(archive)} is damaged: try later or another mirror"
                        " (--base-url)"
                    ) from exc
                log.warning("%s; fetching it again", exc)
                self.result.refetched.append(archive.name)
                continue
            self._record(archive, dest, sha, names)
            return

    def _record(self, archive: Archive, dest: Path, sha: str, names: list[str]) -> None:
        record = self.archives[archive.name]
        _compare_expected(archive, record, names)
        record.update(
            extracted=True,
            images=len(names),
            names=sorted(names),
            bytes=dest.stat().st_size,
            sha256=sha,
            kept=self.options.keep_archives,
        )
        self.present.update(names)
        if not self.options.keep_archives:
            dest.unlink()
        self._write_manifest()

    def _fetch(self, file: RemoteFile, dest: Path) -> None:
        done = fetch(
            self._url(file),
            dest,
            retries=self.options.retries,
            retry_wait=self.options.retry_wait,
            timeout=self.options.timeout,
            progress=self.progress,
            sleep=self.sleep,
        )
        self.result.fetched.append(file.name)
        self.result.received += done.received
        if done.restarted:
            self.result.restarted.append(file.name)

    def _url(self, file: RemoteFile) -> str:
        url = url_of(file, self.options.base_url)
        if url is None:  # reached when images of an archive done before have gone since
            raise ConfigError(
                f"{file.name} must be fetched again but has no known link: pass --base-url"
                f" URL or put it into {self.root} by hand"
            )
        return url

    # ---- after the last archive ----
    def _write_manifest(self) -> Path:
        return write_manifest(
            self.root,
            {
                "source": self.source.name,
                "landing_page": self.source.landing_page,
                "licence": self.source.licence,
                "base_url": self.options.base_url,
                "images_dir": IMAGES_DIR,
                "metadata": self.metadata,
                "archives": self.archives,
            },
        )

    def finish(self) -> DownloadResult:
        result = self.result
        result.manifest = self._write_manifest()
        done = [a for a in self.archives.values() if a.get("extracted")]
        result.parts = sorted(a["part"] for a in done)
        result.images = sum(a["images"] for a in done)
        if result.complete:
            missing = sorted(self.known - self.present)
            if missing:
                raise DataError(
                    f"all {result.parts_total} archives are extracted but {len(missing)} images"
                    f" of Data_Entry are not in {self.images_dir} (e.g. {missing[0]});"
                    f" the archives do not match Data_Entry ({MANIFEST_NAME} lists what each"
                    " held)"
                )
        return result


def _check_known(file: RemoteFile, path: Path, sha: str, error: type[DataError]) -> None:
    """`error` naming the file when its size or SHA-256 differs from the sources file's."""
    size = path.stat().st_size
    if file.bytes is not None and size != file.bytes:
        raise error(f"{file.name} has {size} bytes, the sources file says {file.bytes}")
    if file.sha256 is not None and sha != file.sha256:
        raise error(f"{file.name} has SHA-256 {sha}, the sources file says {file.sha256}")


def _compare_expected(archive: Archive, record: dict, names: list[str]) -> None:
    """Warn when an archive holds other images than its count in the sources file says."""
    first, last = record.get("first"), record.get("last")
    if first is None:
        return
    if len(names) != record.get("expected") or min(names) != first or max(names) != last:
        log.warning(
            "%s holds %d images %s..%s; the sources file's counts say %d images %s..%s"
            " (the manifest records what it holds)",
            archive.name,
            len(names),
            min(names),
            max(names),
            record["expected"],
            first,
            last,
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def describe_parts(result: DownloadResult) -> str:
    """'1-3 of 12' for the CLI."""
    return f"{format_parts(result.parts) or 'none'} of {result.parts_total}"
