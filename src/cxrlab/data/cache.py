"""Decode every image once into a compact on-disk cache that training reads fast.

Layout of `cache_dir` (normally `RUN_DIR/data/cache`; see docs/ARCHITECTURE.md):

- `images.u8`: raw uint8, C order, shape (N, S, S); row i is image i of the given list
  (cohort order), as `imaging.read_square_u8(path, S)` returns it: grey, padded to a centred
  black square, area-resized to S x S.
- `done.u8`: (N,) uint8; 1 marks a row whose pixels are written and synced to disk.
- `meta.json`: `{"format", "n", "size", "ids_sha256", "ids", "complete", ...}`. It is written
  with `complete: false` before any row is (re)written and with `complete: true` last, after
  every row is done and synced, atomically (temp file + `os.replace`).

So a build killed at any moment (SIGKILL included) never leaves a cache that `open_cache`
accepts, and the next `build_cache` with the same ids and size decodes only the rows not yet
marked done. Different ids or size rebuild from scratch. The crash-safe bookkeeping is this
project's own; decoding is `cxrlab.data.imaging`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrlab.data.imaging import read_square_u8, square_offsets
from cxrlab.errors import ConfigError, CxrError, DataError, ImageReadError
from cxrlab.rundir import RunDir

logger = logging.getLogger(__name__)

FORMAT = 1
IMAGES_FILE, DONE_FILE, META_FILE = "images.u8", "done.u8", "meta.json"

#: Rows one worker task decodes before syncing and reporting them: large enough that the
#: per-task cost (pickling, fsync) vanishes, small enough that progress and resume are fine.
MAX_CHUNK = 64

#: `progress` may be a callable; it receives (rows finished in this build, rows to build).
ProgressFn = Callable[[int, int], None]

#: Free space kept beyond the cache itself (meta.json, the other prepare files).
SPACE_MARGIN = 1 << 20
#: How often (s) a worker checks that the process that started it is still alive.
PARENT_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class CacheInfo:
    """What one `build_cache` call found and did."""

    cache_dir: Path
    n: int  # rows in the cache (images)
    size: int  # S: each row is S x S
    ids_sha256: str
    decoded: int  # rows decoded by this call
    reused: int  # rows already done by an earlier (possibly interrupted) build
    seconds: float


def ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 (hex) of the ordered ids, one per line, UTF-8, each line ending in a newline."""
    digest = hashlib.sha256()
    for image_id in ids:
        digest.update(f"{image_id}\n".encode())
    return digest.hexdigest()


def build_cache(
    paths: Sequence[str | Path],
    ids: Sequence[str],
    cache_dir: str | Path,
    size: int = 224,
    workers: int = 1,
    progress: bool | ProgressFn = True,
) -> CacheInfo:
    """Decode `paths` into `cache_dir` (row i = paths[i], named ids[i]); return what was done.

    Rows already done by an earlier build with the same ids and size are kept; the rest are
    decoded with `workers` processes (1 = in this process). `progress` is True for a tqdm bar,
    False for none, or a callable. A file that cannot be read raises `ImageReadError` naming
    it; rows finished before that stay done, so the next call resumes.
    """
    start = time.perf_counter()
    paths = [Path(p) for p in paths]
    ids = [str(i) for i in ids]
    _check_build_args(paths, ids, size, workers)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = ids_sha256(ids)
    meta = _reset_unless_matching(cache_dir, ids, size, digest)
    done = np.memmap(cache_dir / DONE_FILE, dtype=np.uint8, mode="r+", shape=(len(ids),))
    missing = np.flatnonzero(done == 0)
    reused = len(ids) - missing.size
    if missing.size == 0 and meta.get("complete"):
        logger.info("image cache %s is complete (%d rows); nothing to do", cache_dir, len(ids))
        return CacheInfo(cache_dir, len(ids), size, digest, 0, reused, time.perf_counter() - start)
    _write_meta(cache_dir, {**meta, "complete": False})
    _check_files_exist([paths[i] for i in missing])
    _check_free_space(cache_dir, int(missing.size) * size * size)
    logger.info(
        "caching %d images (%d already done) with %d worker(s)", missing.size, reused, workers
    )
    if missing.size:  # zero when a build was killed between its last row and meta.json
        _decode_missing(paths, missing, cache_dir, size, done, workers, progress)
    _sync(cache_dir / IMAGES_FILE)
    _sync(cache_dir / DONE_FILE)
    seconds = time.perf_counter() - start
    _write_meta(cache_dir, {**meta, "complete": True, "build_seconds": round(seconds, 3)})
    return CacheInfo(cache_dir, len(ids), size, digest, int(missing.size), reused, seconds)


def _check_build_args(paths: list[Path], ids: list[str], size: int, workers: int) -> None:
    if len(paths) != len(ids):
        raise DataError(f"got {len(paths)} image paths but {len(ids)} ids; they must pair up")
    if not ids:
        raise DataError("no images to cache; the cohort is empty")
    if len(set(ids)) != len(ids):
        twice = [i for i, count in Counter(ids).items() if count > 1]
        raise DataError(f"image ids must be unique; repeated: {', '.join(map(repr, twice[:5]))}")
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"cache size={size!r} should be a positive integer (e.g. 224)")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} should be an integer >= 1")


def _check_files_exist(paths: list[Path]) -> None:
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise ImageReadError(
            f"{len(absent)} of {len(paths)} image files to cache are missing, "
            f"first: {absent[0]}; check the data root"
        )


def _check_free_space(cache_dir: Path, needed: int) -> None:
    """`DataError` before decoding when the rows still to write cannot fit on the disk.

    images.u8 is sparse: rows not yet written take no space, so a full disk would
    otherwise only show up as ENOSPC part-way through the build.
    """
    free = shutil.disk_usage(cache_dir).free
    if needed + SPACE_MARGIN > free:
        raise DataError(
            f"the image cache needs {_mb(needed + SPACE_MARGIN)} in {cache_dir} but only "
            f"{_mb(free)} is free; free some space, choose a smaller --image-size or "
            "--n-images, or prepare into another --out"
        )


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def _reset_unless_matching(cache_dir: Path, ids: list[str], size: int, digest: str) -> dict:
    """Keep the cache when it was made for these ids and size; otherwise start it afresh.

    Returns the meta dict the build carries on with.
    """
    n = len(ids)
    meta = _read_meta(cache_dir)
    wanted = {"format": FORMAT, "n": n, "size": size, "ids_sha256": digest}
    if meta is not None and all(meta.get(k) == v for k, v in wanted.items()):
        if (
            _file_size(cache_dir / IMAGES_FILE) == n * size * size
            and _file_size(cache_dir / DONE_FILE) == n
        ):
            return meta
    if meta is not None or (cache_dir / IMAGES_FILE).exists():
        logger.info("image cache %s was made for other images or size; rebuilding", cache_dir)
    fresh = {**wanted, "complete": False, "dtype": "uint8", "shape": [n, size, size]}
    fresh["resize"] = "grey, pad to centred black square, box filter (area mean)"
    fresh["ids"] = ids
    _write_meta(cache_dir, fresh)  # first, so no stale "complete" outlives the reset
    with open(cache_dir / IMAGES_FILE, "wb") as handle:
        handle.truncate(n * size * size)  # sparse: reads as zeros until written
    with open(cache_dir / DONE_FILE, "wb") as handle:
        handle.write(bytes(n))
    return fresh


def _decode_missing(
    paths: list[Path],
    missing: np.ndarray,
    cache_dir: Path,
    size: int,
    done: np.memmap,
    workers: int,
    progress: bool | ProgressFn,
) -> None:
    """Decode the rows in `missing`, marking each chunk done once its pixels are synced."""
    chunk = max(1, min(MAX_CHUNK, missing.size // (workers * 4) or 1))
    tasks = [missing[i : i + chunk].tolist() for i in range(0, missing.size, chunk)]
    images = str(cache_dir / IMAGES_FILE)
    bar = tqdm(
        total=int(missing.size), unit="img", desc="caching images", disable=progress is not True
    )
    finished = 0
    with bar:
        for rows in _run_tasks(tasks, paths, images, size, workers):
            done[rows] = 1
            done.flush()
            finished += len(rows)
            bar.update(len(rows))
            if callable(progress):
                progress(finished, int(missing.size))


def _run_tasks(
    tasks: list[list[int]], paths: list[Path], images: str, size: int, workers: int
) -> Iterator[list[int]]:
    """Yield each task's rows as it finishes, in this process or a pool of `workers`."""
    if workers == 1:
        for rows in tasks:
            yield _write_rows(images, size, rows, [paths[i] for i in rows])
        return
    # forkserver/spawn, not fork: the parent may hold torch threads, and fork with threads
    # can deadlock. Workers import only numpy, Pillow and cxrlab.data.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_watch_parent,
        initargs=(os.getpid(),),
    )
    try:
        pending: set[Future] = {
            pool.submit(_write_rows, images, size, rows, [paths[i] for i in rows]) for rows in tasks
        }
        while pending:
            # Each task's rows are marked done as soon as it finishes, so a kill loses only
            # the tasks in flight; an error surfaces after the successes that came with it.
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: f.exception() is not None):
                yield _result_of(future)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit when the building process is gone (killed with SIGKILL, it
    cannot stop its pool), instead of decoding on as an orphan."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the builder there
        return

    def watch() -> None:
        while _alive(parent):
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="cxrlab-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed builder whose parent has not reaped it yet is a zombie: gone too
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill's answer stands
    return state != "Z"


def _result_of(future: Future) -> list[int]:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise DataError(
            "an image-cache worker process died (out of memory or killed); rows finished "
            "so far are kept: run `cxrlab prepare` again, perhaps with fewer workers"
        ) from exc


def _write_rows(images: str, size: int, rows: list[int], paths: list[Path]) -> list[int]:
    """Worker task: decode `paths` into `rows` of the images file, sync, return the rows.

    Writes with `pwrite` at each row's offset (rows need not be contiguous on a resume) and
    syncs before returning, so a row is only ever marked done after its pixels are on disk.
    """
    row_bytes = size * size
    fd = os.open(images, os.O_WRONLY)
    try:
        for row, path in zip(rows, paths, strict=True):
            os.pwrite(fd, _square_bytes(path, size), row * row_bytes)
        _fdatasync(fd)
    finally:
        os.close(fd)
    return rows


def _square_bytes(path: Path, size: int) -> bytes:
    try:
        return read_square_u8(path, size).tobytes()
    except CxrError:
        raise
    except Exception as exc:  # e.g. MemoryError resizing a huge image: name the file
        raise ImageReadError(f"cannot cache image {path}: {type(exc).__name__}: {exc}") from exc


def _fdatasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else -1


def _read_meta(cache_dir: Path) -> dict | None:
    """meta.json as a dict, or None when absent or unreadable (then the cache is rebuilt)."""
    try:
        meta = json.loads((cache_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(cache_dir: Path, meta: dict) -> None:
    """Replace meta.json atomically: a reader sees the old file or the new one, never half."""
    target = cache_dir / META_FILE
    temp = cache_dir / f".{META_FILE}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target)
    _sync_dir(cache_dir)


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows) have no need
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CachedImages:
    """A finished cache, read-only: `images` is a (N, S, S) uint8 memmap in cohort order.

    Pickling (e.g. into DataLoader workers) carries the path, not the pixels: the memmap is
    reopened on first use in the receiving process.
    """

    def __init__(self, cache_dir: Path, meta: dict) -> None:
        self.cache_dir = cache_dir
        self.n: int = int(meta["n"])
        self.size: int = int(meta["size"])
        self.ids: list[str] = list(meta["ids"])
        self.ids_sha256: str = str(meta["ids_sha256"])
        self._images: np.memmap | None = None

    @property
    def images(self) -> np.memmap:
        if self._images is None:
            self._images = np.memmap(
                self.cache_dir / IMAGES_FILE,
                dtype=np.uint8,
                mode="r",
                shape=(self.n, self.size, self.size),
            )
        return self._images

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> np.ndarray:
        return self.images[row]  # (S, S) uint8, read-only view

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def check_ids(self, ids: Sequence[str]) -> None:
        """Raise `DataError` unless `ids` are exactly the cached rows, in the same order."""
        ids = [str(i) for i in ids]
        if ids_sha256(ids) == self.ids_sha256:
            return
        if len(ids) != self.n:
            raise DataError(
                f"the cache at {self.cache_dir} holds {self.n} images but {len(ids)} were "
                "expected; run `cxrlab prepare` again to rebuild it"
            )
        row = next(i for i, (a, b) in enumerate(zip(ids, self.ids, strict=True)) if a != b)
        raise DataError(
            f"cache row {row} of {self.cache_dir} is {self.ids[row]!r} but {ids[row]!r} was "
            "expected; the cohort and the cache disagree: run `cxrlab prepare` again"
        )


def open_cache(cache_dir: str | Path) -> CachedImages:
    """Open a finished cache read-only; `DataError` when it is missing or incomplete.

    `cache_dir` is the cache folder or a run directory (its `data/cache` is used).
    """
    cache_dir = Path(cache_dir)
    if not (cache_dir / META_FILE).exists() and RunDir(cache_dir).cache.is_dir():
        cache_dir = RunDir(cache_dir).cache
    meta = _read_meta(cache_dir)
    if meta is None:
        raise DataError(
            f"no image cache at {cache_dir} ({META_FILE} missing or unreadable); "
            "run `cxrlab prepare` to build it"
        )
    if meta.get("format") != FORMAT:
        raise DataError(
            f"image cache at {cache_dir} has format {meta.get('format')!r}; this cxrlab reads "
            f"format {FORMAT}: run `cxrlab prepare` again to rebuild it"
        )
    absent = [key for key in ("n", "size", "ids_sha256", "ids") if key not in meta]
    if absent:
        raise DataError(
            f"{cache_dir / META_FILE} lacks {', '.join(absent)}; run `cxrlab prepare` again"
        )
    n, size = int(meta["n"]), int(meta["size"])
    done = _count_done(cache_dir / DONE_FILE, n)
    expected = n * size * size
    actual = _file_size(cache_dir / IMAGES_FILE)
    if actual != expected and meta.get("complete") and done == n:
        found = "missing" if actual < 0 else f"{actual} bytes"
        raise DataError(
            f"{cache_dir / IMAGES_FILE} is {found} but {n} images at {size}x{size} take "
            f"{expected} bytes (truncated or replaced after it was built); run `cxrlab prepare` "
            "again to rebuild it"
        )
    if not meta.get("complete") or done != n or actual != expected:
        raise DataError(
            f"image cache at {cache_dir} is incomplete ({done} of {n} images done); "
            "run `cxrlab prepare` again to finish it"
        )
    return CachedImages(cache_dir, meta)


def _count_done(path: Path, n: int) -> int:
    if _file_size(path) != n:
        return 0
    return int(np.count_nonzero(np.fromfile(path, dtype=np.uint8)))


def box_to_cache_coords(
    x: float, y: float, w: float, h: float, frame_w: int, frame_h: int
) -> tuple[float, float, float, float]:
    """Map a box (x, y, w, h pixels in a frame_w x frame_h image) to (x0, y0, x1, y1) in
    [0, 1] of the square cached image, following the same centred pad-to-square rule.

    The frame is the one the box is given in (NIH boxes: the 1024 x 1024 original), which may
    differ from the cached file's resolution as long as the aspect ratio is the same.
    Coordinates are clipped to the image.
    """
    if frame_w <= 0 or frame_h <= 0:
        raise DataError(f"frame size {frame_w}x{frame_h} should be positive")
    if w <= 0 or h <= 0:
        raise DataError(f"box width/height {w}x{h} at ({x}, {y}) should be positive")
    side, left, top = square_offsets(frame_w, frame_h)
    x0, x1 = np.clip([x, x + w], 0, frame_w) + left
    y0, y1 = np.clip([y, y + h], 0, frame_h) + top
    return (float(x0 / side), float(y0 / side), float(x1 / side), float(y1 / side))
