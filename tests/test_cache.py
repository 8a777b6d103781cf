"""The on-disk image cache: layout, values, resume, crash safety, workers, box mapping."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxrlab.data.cache as cache_module
from cxrlab.data.cache import (
    box_to_cache_coords,
    build_cache,
    ids_sha256,
    open_cache,
)
from cxrlab.data.imaging import read_square_u8
from cxrlab.errors import ConfigError, DataError, ImageReadError

SIZE = 8


def _images(folder: Path, count: int = 20) -> tuple[list[Path], list[str]]:
    """`count` small PNGs of varied shapes (square, wide, tall, odd), seeded noise."""
    rng = np.random.default_rng(7)
    shapes = [(16, 16), (8, 16), (16, 8), (5, 12), (24, 24)]
    paths, ids = [], []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, shapes[i % len(shapes)], np.uint8)).save(path)
        paths.append(path)
        ids.append(f"img{i:02d}")
    return paths, ids


def _counting_reads(monkeypatch) -> list[str]:
    """Record the name of every file the (in-process) cache build decodes."""
    seen: list[str] = []

    def counted(path, size):
        seen.append(Path(path).name)
        return read_square_u8(path, size)

    monkeypatch.setattr(cache_module, "read_square_u8", counted)
    return seen


def test_build_matches_direct_read_and_writes_the_contract(tmp_path):
    paths, ids = _images(tmp_path)
    info = build_cache(paths, ids, tmp_path / "cache", size=SIZE, progress=False)
    assert (info.n, info.size, info.decoded, info.reused) == (20, SIZE, 20, 0)
    cached = open_cache(tmp_path / "cache")
    assert cached.images.shape == (20, SIZE, SIZE) and cached.images.dtype == np.uint8
    assert not cached.images.flags.writeable
    for row, path in enumerate(paths):
        assert np.array_equal(cached[row], read_square_u8(path, SIZE)), path
    raw = np.fromfile(tmp_path / "cache" / "images.u8", dtype=np.uint8)
    assert raw.size == 20 * SIZE * SIZE  # no header: a raw memmap
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["complete"] is True and meta["format"] == 1
    assert (meta["n"], meta["size"], meta["ids"]) == (20, SIZE, ids)
    assert meta["ids_sha256"] == ids_sha256(ids) == cached.ids_sha256
    assert np.fromfile(tmp_path / "cache" / "done.u8", dtype=np.uint8).tolist() == [1] * 20


def test_ids_sha256_is_the_documented_hash():
    import hashlib

    assert ids_sha256(["a", "b"]) == hashlib.sha256(b"a\nb\n").hexdigest()
    assert ids_sha256(["a", "b"]) != ids_sha256(["b", "a"])


def test_non_square_image_is_padded_black_and_centred(tmp_path):
    Image.fromarray(np.full((3, 8), 200, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((16, 8), 100, np.uint8)).save(tmp_path / "tall.png")
    build_cache(
        [tmp_path / "wide.png", tmp_path / "tall.png"],
        ["w", "t"],
        tmp_path / "c",
        8,
        progress=False,
    )
    wide, tall = open_cache(tmp_path / "c").images
    # 3x8 in an 8x8 square, top = (8 - 3) // 2 = 2: rows 2-4 hold the image.
    assert (wide[2:5] == 200).all() and (wide[:2] == 0).all() and (wide[5:] == 0).all()
    # 16x8 -> 16x16, left = 4 -> halved: columns 2-5 hold the image.
    assert (tall[:, 2:6] == 100).all() and (tall[:, :2] == 0).all() and (tall[:, 6:] == 0).all()


def test_rerun_decodes_only_rows_not_marked_done(tmp_path, monkeypatch):
    paths, ids = _images(tmp_path)
    cache = tmp_path / "cache"
    build_cache(paths, ids, cache, SIZE, progress=False)
    images = np.memmap(cache / "images.u8", np.uint8, "r+", shape=(20, SIZE, SIZE))
    images[[3, 7]] = 0  # forget the pixels of rows 3 and 7 ...
    images.flush()
    done = np.memmap(cache / "done.u8", np.uint8, "r+", shape=(20,))
    done[[3, 7]] = 0  # ... and their done marks
    done.flush()
    with pytest.raises(DataError, match="incomplete"):
        open_cache(cache)
    seen = _counting_reads(monkeypatch)
    info = build_cache(paths, ids, cache, SIZE, progress=False)
    assert sorted(seen) == ["img03.png", "img07.png"]
    assert (info.decoded, info.reused) == (2, 18)
    cached = open_cache(cache)
    assert np.array_equal(cached[3], read_square_u8(paths[3], SIZE))
    seen.clear()
    again = build_cache(paths, ids, cache, SIZE, progress=False)
    assert seen == [] and again.decoded == 0


def test_other_ids_or_size_rebuild_from_scratch(tmp_path, monkeypatch):
    paths, ids = _images(tmp_path, 6)
    cache = tmp_path / "cache"
    build_cache(paths, ids, cache, SIZE, progress=False)
    seen = _counting_reads(monkeypatch)
    reordered = build_cache(paths[::-1], ids[::-1], cache, SIZE, progress=False)
    assert reordered.decoded == 6 and len(seen) == 6
    assert np.array_equal(open_cache(cache)[0], read_square_u8(paths[-1], SIZE))
    bigger = build_cache(paths, ids, cache, 12, progress=False)
    assert bigger.decoded == 6 and open_cache(cache).images.shape == (6, 12, 12)


_KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from cxrlab.data.cache import build_cache

def die_after_first_chunk(finished, total):
    os.kill(os.getpid(), signal.SIGKILL)

paths = [Path(p) for p in sys.argv[2:]]
build_cache(paths, [p.stem for p in paths], sys.argv[1], 8, progress=die_after_first_chunk)
"""


def test_sigkilled_build_is_refused_then_resumed(tmp_path):
    paths, ids = _images(tmp_path)
    cache = tmp_path / "cache"
    script = textwrap.dedent(_KILLED_BUILD)
    killed = subprocess.run([sys.executable, "-c", script, str(cache), *map(str, paths)])
    assert killed.returncode == -signal.SIGKILL
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["complete"] is False
    with pytest.raises(DataError, match=r"incomplete \(5 of 20 images done\).*prepare. again"):
        open_cache(cache)
    info = build_cache(paths, ids, cache, SIZE, progress=False)
    assert (info.decoded, info.reused) == (15, 5)
    cached = open_cache(cache)
    assert all(np.array_equal(cached[i], read_square_u8(p, SIZE)) for i, p in enumerate(paths))


def test_removed_meta_is_refused(tmp_path):
    paths, ids = _images(tmp_path, 3)
    build_cache(paths, ids, tmp_path / "cache", SIZE, progress=False)
    (tmp_path / "cache" / "meta.json").unlink()
    with pytest.raises(DataError, match=r"no image cache.*meta\.json missing.*cxrlab prepare"):
        open_cache(tmp_path / "cache")


def test_meta_without_ids_is_refused(tmp_path):
    paths, ids = _images(tmp_path, 2)
    build_cache(paths, ids, tmp_path / "c", SIZE, progress=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    del meta["ids"]
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json lacks ids"):
        open_cache(tmp_path / "c")


def test_workers_give_identical_bytes_and_progress(tmp_path):
    paths, ids = _images(tmp_path)
    calls: list[tuple[int, int]] = []
    build_cache(paths, ids, tmp_path / "one", SIZE, workers=1, progress=False)
    info = build_cache(
        paths, ids, tmp_path / "two", SIZE, workers=2, progress=lambda *a: calls.append(a)
    )
    assert info.decoded == 20
    one = (tmp_path / "one" / "images.u8").read_bytes()
    assert one == (tmp_path / "two" / "images.u8").read_bytes()
    assert calls[-1] == (20, 20) and [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_corrupt_file_in_worker_surfaces_its_name(tmp_path):
    paths, ids = _images(tmp_path)
    paths[13].write_bytes(paths[13].read_bytes()[:100])  # truncate img13.png
    with pytest.raises(ImageReadError, match=r"img13\.png"):
        build_cache(paths, ids, tmp_path / "cache", SIZE, workers=2, progress=False)
    with pytest.raises(DataError, match="incomplete"):
        open_cache(tmp_path / "cache")
    done = np.fromfile(tmp_path / "cache" / "done.u8", dtype=np.uint8)
    assert done[13] == 0


def test_missing_files_are_reported_before_decoding(tmp_path):
    paths, ids = _images(tmp_path, 4)
    paths[2].unlink()
    with pytest.raises(ImageReadError, match=r"1 of 4 image files .* missing, first: .*img02"):
        build_cache(paths, ids, tmp_path / "cache", SIZE, progress=False)


@pytest.mark.parametrize(
    ("ids", "size", "workers", "error", "match"),
    [
        (["a"], 8, 1, DataError, "2 image paths but 1 ids"),
        (["a", "a"], 8, 1, DataError, "unique; repeated: 'a'"),
        (["a", "b"], 0, 1, ConfigError, "size=0"),
        (["a", "b"], 8, 0, ConfigError, "workers=0"),
    ],
)
def test_bad_arguments(tmp_path, ids, size, workers, error, match):
    paths, _ = _images(tmp_path, 2)
    with pytest.raises(error, match=match):
        build_cache(paths, ids, tmp_path / "c", size, workers=workers, progress=False)


def test_open_cache_accepts_a_run_dir_and_checks_ids(tmp_path):
    paths, ids = _images(tmp_path, 4)
    build_cache(paths, ids, tmp_path / "run" / "data" / "cache", SIZE, progress=False)
    cached = open_cache(tmp_path / "run")
    assert len(cached) == 4 and cached.ids == ids
    cached.check_ids(ids)
    with pytest.raises(DataError, match=r"cache row 1 .* is 'img01' but 'x' was expected"):
        cached.check_ids([ids[0], "x", *ids[2:]])
    with pytest.raises(DataError, match="holds 4 images but 3"):
        cached.check_ids(ids[:3])


def test_open_cache_when_nothing_is_there(tmp_path):
    with pytest.raises(DataError, match="no image cache.*run `cxrlab prepare`"):
        open_cache(tmp_path / "empty")


def test_pickling_carries_the_path_not_the_pixels(tmp_path):
    paths, ids = _images(tmp_path, 4)
    build_cache(paths, ids, tmp_path / "c", 32, progress=False)
    cached = open_cache(tmp_path / "c")
    expected = np.array(cached.images)
    blob = pickle.dumps(cached)
    assert len(blob) < 4 * 32 * 32
    assert np.array_equal(pickle.loads(blob).images, expected)


def test_box_to_cache_coords_by_hand():
    assert box_to_cache_coords(100, 200, 50, 100, 1024, 1024) == (
        100 / 1024,
        200 / 1024,
        150 / 1024,
        300 / 1024,
    )
    # 200 x 100 frame in a 200 square: 50 rows of padding on top.
    assert box_to_cache_coords(0, 0, 200, 100, 200, 100) == (0.0, 0.25, 1.0, 0.75)
    # Clipped to the image: a box hanging off the right edge stops at x = 200.
    assert box_to_cache_coords(150, 0, 100, 100, 200, 100)[2] == 1.0
    with pytest.raises(DataError, match="should be positive"):
        box_to_cache_coords(0, 0, 0, 5, 10, 10)


def test_box_lands_on_the_cached_pixels(tmp_path):
    frame = np.zeros((20, 40), np.uint8)  # wide: 10 rows of padding above and below
    frame[4:12, 8:24] = 255  # the "finding": x=8, y=4, w=16, h=8
    Image.fromarray(frame).save(tmp_path / "f.png")
    build_cache([tmp_path / "f.png"], ["f"], tmp_path / "c", 20, progress=False)
    image = open_cache(tmp_path / "c")[0]
    x0, y0, x1, y1 = (round(v * 20) for v in box_to_cache_coords(8, 4, 16, 8, 40, 20))
    assert (image[y0:y1, x0:x1] == 255).all()
    assert image.sum() == 255 * (y1 - y0) * (x1 - x0)


@pytest.mark.realdata
def test_real_nih_images(nih_dev, tmp_path):
    paths = sorted((nih_dev / "images").glob("*.png"))[:6]
    build_cache(paths, [p.name for p in paths], tmp_path / "c", 224, progress=False)
    cached = open_cache(tmp_path / "c")
    for row, path in enumerate(paths):
        assert np.array_equal(cached[row], read_square_u8(path, 224))
    assert 20 < cached.images.mean() < 235  # a real radiograph, not a blank


def test_build_leaves_no_temp_files(tmp_path):
    paths, ids = _images(tmp_path, 2)
    build_cache(paths, ids, tmp_path / "c", SIZE, progress=False)
    assert sorted(os.listdir(tmp_path / "c")) == ["done.u8", "images.u8", "meta.json"]
