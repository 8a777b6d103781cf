"""Robustness (issue 11): kills, races, full disks and odd inputs end in one clear line, lose
no finished work and never give a silently wrong result.

docs/robustness.md lists every case with its expected behaviour; the tests named there keep
it true. Real signals and real file systems where the machine allows (a private mount
namespace for a tiny tmpfs), an injected OSError where it does not.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlab.cli import main
from cxrlab.config import DataConfig, EvaluateConfig, build, load_yaml
from cxrlab.data.cache import DONE_FILE, IMAGES_FILE, build_cache, open_cache
from cxrlab.data.metadata import read_data_entry
from cxrlab.data.prepare import prepare
from cxrlab.errors import DataError
from cxrlab.locking import exclusive
from cxrlab.models.checkpoint import check_readable
from cxrlab.rundir import RunDir
from cxrlab.train.engine import train_model
from helpers_run import make_tiny_run

TINY_YAML = """\
model: {name: simple_cnn, kwargs: {base_width: 8, depth: 3}}
train: {epochs: 3, batch_size: 16, patience: 10}
"""
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"
)


# ---- helpers ---------------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str]:
    """`cxrlab ARGS` in this process: (exit code, stderr). An exception that escapes `main`
    (a traceback for the user) fails the test by itself."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, capsys.readouterr().err


def one_error(code: int, err: str, *fragments: str, exit_code: int = 1) -> str:
    """The exit code, no traceback, exactly one `error:` line holding every fragment."""
    assert code == exit_code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("CXRLAB_DEBUG", None)
    return env


def python(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def proc_error(proc: subprocess.CompletedProcess, *fragments: str, exit_code: int = 1) -> str:
    return one_error(proc.returncode, proc.stderr, *fragments, exit_code=exit_code)


def _config_file(tmp_path: Path, epochs: int = 3) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML.replace("epochs: 3", f"epochs: {epochs}"))
    return path


def _metrics(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(RunDir(run).model(name).metrics_csv).drop(columns="seconds")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


#: `cxrlab ARGS` with a callback that sends this process SIGNAL when epoch 1 starts: a real
#: signal through the real handlers, at a moment the test knows.
_SIGNAL_AT_EPOCH_1 = """
import os, signal, sys
import lightning as L
import cxrlab.train.engine as engine
SIGNAL = getattr(signal, sys.argv.pop(1))
class SignalAtEpoch1(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            os.kill(os.getpid(), SIGNAL)
make = engine.make_trainer
engine.make_trainer = lambda *a: make(*a[:4], [*a[4], SignalAtEpoch1()], a[5])
from cxrlab.cli import main
main(sys.argv[1:])
"""

#: `cxrlab ARGS` whose training waits at epoch 0 until the file FLAG exists.
_WAIT_FOR_FLAG = """
import sys, time
from pathlib import Path
import lightning as L
import cxrlab.train.engine as engine
FLAG = Path(sys.argv.pop(1))
class Wait(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        while not FLAG.exists():
            time.sleep(0.05)
make = engine.make_trainer
engine.make_trainer = lambda *a: make(*a[:4], [*a[4], Wait()], a[5])
from cxrlab.cli import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run with model `m` trained for 2 epochs (finished). Copy it before changing it."""
    run = make_tiny_run(tmp_path_factory.mktemp("trained"), n=64, size=32)
    train_model(run, load_yaml(_config_file(run.parent, epochs=2)), name="m", progress_bar=False)
    return run


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


# ---- signals -----------------------------------------------------------------------------------
def test_sigterm_during_training_exits_143_and_resume_matches_a_straight_run(
    tmp_path: Path, capsys, caplog
):
    run = make_tiny_run(tmp_path, n=64, size=32)
    config = _config_file(tmp_path)
    proc = python(
        "-c", _SIGNAL_AT_EPOCH_1, "SIGTERM", "train", run, "--config", config, "--name", "m"
    )
    proc_error(proc, "SIGTERM", "interrupted at epoch 1", "--resume", exit_code=143)
    # Lightning's hardware lines and its "tip" banner are for --verbose only
    assert "GPU available" not in proc.stderr and "Tip" not in proc.stderr, proc.stderr
    folder = RunDir(run).model("m")
    info = json.loads(folder.run_json.read_text())
    assert info["finished"] is None
    assert (info["interrupted"]["by"], info["interrupted"]["epochs_saved"]) == ("SIGTERM", 1)
    assert _metrics(run, "m")["epoch"].tolist() == [0]

    with caplog.at_level(logging.WARNING, logger="cxrlab"):
        code, err = cli(capsys, "evaluate", run, "--model", "m", "--bootstrap", "10")
    assert code == 0, err
    assert "training of model 'm' was stopped" in caplog.text

    code, err = cli(capsys, "train", run, "--name", "m", "--resume")
    assert code == 0, err
    info = json.loads(folder.run_json.read_text())
    assert info["finished"] and info["interrupted"] is None and len(info["resumed"]) == 1
    straight = train_model(run, load_yaml(config), name="straight", progress_bar=False)
    pd.testing.assert_frame_equal(_metrics(run, "m"), _metrics(run, "straight"))
    resumed, reference = _weights(folder.last_ckpt), _weights(straight.last_checkpoint)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_ctrl_c_during_training_exits_130_with_cxrlabs_message(tmp_path: Path):
    run = make_tiny_run(tmp_path, n=64, size=32)
    config = _config_file(tmp_path)
    proc = python(
        "-c", _SIGNAL_AT_EPOCH_1, "SIGINT", "train", run, "--config", config, "--name", "m"
    )
    proc_error(proc, "Ctrl-C", "interrupted at epoch 1", "--resume", exit_code=130)
    assert "Detected KeyboardInterrupt" not in proc.stderr


# ---- locks -------------------------------------------------------------------------------------
def test_two_concurrent_trains_of_one_model_one_is_refused(tmp_path: Path, capsys):
    run = make_tiny_run(tmp_path, n=64, size=32)
    config, flag = _config_file(tmp_path, epochs=1), tmp_path / "go"
    lock = RunDir(run).model("m").lock
    args = ["-c", _WAIT_FOR_FLAG, flag, "train", run, "--config", config, "--name", "m"]
    first = subprocess.Popen(
        [sys.executable, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "first train never locked"
            time.sleep(0.1)
        code, err = cli(capsys, "train", run, "--config", config, "--name", "m")
        one_error(code, err, f"in use by pid {first.pid}", str(RunDir(run).model("m").path))
    finally:
        flag.touch()
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err  # the first one's result is the one kept
    assert len(_metrics(run, "m")) == 1


def test_second_prepare_and_second_run_on_one_directory_are_refused(tmp_path: Path, capsys):
    out = tmp_path / "run"
    with exclusive(RunDir(out).data_lock, "test"):
        code, err = cli(capsys, "prepare", "--data-root", tmp_path, "--out", out)
    one_error(code, err, f"in use by pid {os.getpid()}", "data/")
    study = tmp_path / "study.yaml"
    study.write_text("models:\n  - {name: a, model: {name: simple_cnn}}\n")
    with exclusive(RunDir(out).lock, "test"):
        code, err = cli(capsys, "run", study, "--out", out, "--data-root", tmp_path)
    one_error(code, err, f"in use by pid {os.getpid()}", str(out))
    assert not RunDir(out).stages.exists()  # no stage began


def test_train_and_prepare_of_one_run_exclude_each_other(tmp_path: Path, capsys):
    run = make_tiny_run(tmp_path, n=64, size=32)
    with exclusive(RunDir(run).data_lock, "test"):  # a prepare is rewriting data/
        code, err = cli(capsys, "train", run, "--model", "simple_cnn", "--epochs", "1")
    one_error(code, err, f"in use by pid {os.getpid()}", "being prepared")
    assert not RunDir(run).model("simple_cnn").path.exists()
    with exclusive(RunDir(run).model("m").lock, "test"):  # a train of m is running
        code, err = cli(capsys, "prepare", "--data-root", tmp_path, "--out", run)
    one_error(code, err, f"in use by pid {os.getpid()}", "model 'm'", "being trained")


# ---- the image cache ---------------------------------------------------------------------------
#: build_cache with two workers over PATHS (json) into CACHE; reports worker pids as it goes.
_BUILD_TWO_WORKERS = """
import json, multiprocessing, sys
from pathlib import Path
import cxrlab.data.cache as cache
cache._check_files_exist = lambda paths: None  # one path is a FIFO, not a regular file
paths, out = json.loads(sys.argv[1]), Path(sys.argv[2])
def progress(done, total):
    pids = [p.pid for p in multiprocessing.active_children()]
    (out.parent / "workers.json").write_text(json.dumps(pids))
cache.build_cache(paths, [Path(p).name for p in paths], out, size=16, workers=2, progress=progress)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{i:08d}_000.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(path)
    return paths


def test_killed_two_worker_cache_build_keeps_finished_rows_and_its_workers_die(tmp_path: Path):
    """One image is a FIFO nobody writes: its task never ends, the other 7 of 8 tasks (8 rows
    each) do. They must be marked done while the build still runs, and survive SIGKILL."""
    n, chunk, stuck = 64, 8, 60
    paths = _pngs(tmp_path / "images", n)
    paths[stuck].unlink()
    os.mkfifo(paths[stuck])
    cache = tmp_path / "cache"
    builder = subprocess.Popen(
        [sys.executable, "-c", _BUILD_TWO_WORKERS, json.dumps(list(map(str, paths))), cache],
        env=_env(),
    )
    done_file, workers_file = cache / DONE_FILE, tmp_path / "workers.json"
    try:
        deadline, done = time.monotonic() + 90, 0
        while time.monotonic() < deadline and builder.poll() is None:
            if done_file.is_file() and done_file.stat().st_size == n:
                done = int(np.count_nonzero(np.fromfile(done_file, dtype=np.uint8)))
            if done == n - chunk and workers_file.is_file():
                break
            time.sleep(0.1)
        assert done == n - chunk, f"{done} rows marked done while the build runs"
        workers = json.loads(workers_file.read_text())
        assert len(workers) == 2
    finally:
        builder.kill()
        builder.wait()
        try:  # free a reader still blocked on the FIFO (old code leaves one behind)
            os.close(os.open(paths[stuck], os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers), "cache workers outlived the killed build"

    paths[stuck].unlink()
    Image.fromarray(np.full((24, 20), 7, dtype=np.uint8)).save(paths[stuck])
    ids = [p.name for p in paths]
    info = build_cache(paths, ids, cache, size=16, workers=1, progress=False)
    assert (info.reused, info.decoded) == (n - chunk, chunk)
    fresh = build_cache(paths, ids, tmp_path / "fresh", size=16, workers=1, progress=False)
    assert np.array_equal(open_cache(cache).images, open_cache(fresh.cache_dir).images)


#: `cxrlab ARGS` that sends itself SIGTERM while decoding the 40th image of the cache.
_SIGTERM_AT_IMAGE_40 = """
import os, signal, sys
import cxrlab.data.cache as cache
read, seen = cache.read_square_u8, []
def read_then_stop(path, size):
    seen.append(path)
    if len(seen) == 40:
        os.kill(os.getpid(), signal.SIGTERM)
    return read(path, size)
cache.read_square_u8 = read_then_stop
from cxrlab.cli import main
main(sys.argv[1:])
"""


def _png_root(folder: Path, n: int) -> Path:
    """An NIH-layout data root of n PNGs, one patient each, labels in a cycle."""
    paths = _pngs(folder / "images", n)
    labels = ["No Finding", "Effusion", "Atelectasis", "Effusion|Atelectasis"]
    rows = [f"{p.name},{labels[i % 4]},0,{i + 1},50,M,PA" for i, p in enumerate(paths)]
    (folder / "Data_Entry_2017.csv").write_text("\n".join([ENTRY_HEADER, *rows]) + "\n")
    return folder


def test_sigterm_during_prepare_exits_143_and_the_rerun_keeps_the_decoded_rows(tmp_path: Path):
    root, out = _png_root(tmp_path / "nih", 64), tmp_path / "run"
    args = ["prepare", "--data-root", root, "--out", out, "--image-size", "32"]
    proc = python("-c", _SIGTERM_AT_IMAGE_40, *args)
    proc_error(proc, "stopped by SIGTERM", "run the same command again", exit_code=143)
    options = build(DataConfig, {"data_root": str(root), "image_size": 32})
    cache = prepare(options, out, progress=False).cache  # one worker: tasks of 64 // 4 rows
    assert (cache.reused, cache.decoded) == (32, 32)


def test_cache_checks_free_space_before_decoding(tmp_path: Path, monkeypatch):
    paths = _pngs(tmp_path / "images", 4)
    usage = shutil.disk_usage(tmp_path)._replace(free=1 << 19)
    monkeypatch.setattr("cxrlab.data.cache.shutil.disk_usage", lambda path: usage)
    with pytest.raises(DataError, match=r"needs 1\.0 MiB in .* but only 0\.5 MiB is free"):
        build_cache(paths, [p.name for p in paths], tmp_path / "cache", size=16, progress=False)


def test_truncated_images_file_says_truncated(copy: Path, capsys):
    images = RunDir(copy).cache / IMAGES_FILE
    os.truncate(images, images.stat().st_size // 2)
    code, err = cli(capsys, "train", copy, "--model", "simple_cnn", "--name", "x", "--epochs", "1")
    one_error(code, err, str(images), "truncated", "cxrlab prepare")


# ---- checkpoints -------------------------------------------------------------------------------
def test_truncated_last_checkpoint_is_one_line_naming_it_and_the_fix(copy: Path, capsys):
    last = RunDir(copy).model("m").last_ckpt
    os.truncate(last, last.stat().st_size // 2)
    code, err = cli(capsys, "train", copy, "--name", "m", "--resume")
    one_error(code, err, str(last), "damaged", "--overwrite")
    best = RunDir(copy).model("m").best_ckpt
    os.truncate(best, 100)
    code, err = cli(capsys, "evaluate", copy, "--model", "m", "--bootstrap", "10")
    one_error(code, err, str(best), "damaged")


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    from cxrlab.train.trainer import AtomicCheckpointIO

    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left") as err:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert err.value.filename == str(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["last.ckpt"]
    check_readable(target)


def test_stopped_before_the_first_checkpoint_fresh_start_works_and_resume_says_so(
    copy: Path, capsys
):
    folder = RunDir(copy).model("m")
    folder.best_ckpt.unlink()
    folder.last_ckpt.unlink()  # what a kill during epoch 0 leaves: config, run.json, metrics
    code, err = cli(capsys, "train", copy, "--name", "m", "--resume")
    one_error(code, err, "last.ckpt not found", "train without --resume")
    code, err = cli(capsys, "train", copy, "--model", "simple_cnn", "--name", "m", "--epochs", "1")
    assert code == 0, err


# ---- file systems ------------------------------------------------------------------------------
def _private_tmpfs(tmp_path: Path, size: str, then: str) -> subprocess.CompletedProcess:
    """Mount a `size` tmpfs at tmp_path/mnt in a private mount namespace (gone with the
    process), then run the shell lines `then` (`$MNT` is the mount point); skip where the
    machine does not allow it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to mount a private tmpfs")
    script = f"set -e\nMNT='{mnt}'\nmount -t tmpfs -o size={size} tmpfs \"$MNT\" || exit 77\n{then}"
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    return proc


def test_read_only_run_directory_is_one_line(trained: Path, tmp_path: Path):
    config = _config_file(tmp_path, epochs=1)
    proc = _private_tmpfs(
        tmp_path,
        "8m",
        f'cp -a "{trained}" "$MNT/run"\nmount -o remount,ro "$MNT"\n'
        f'exec "{sys.executable}" -m cxrlab train "$MNT/run" --config "{config}" --name m2',
    )
    proc_error(proc, "Read-only file system", str(tmp_path / "mnt" / "run"))


def test_full_disk_during_training_is_one_line(trained: Path, tmp_path: Path):
    config = _config_file(tmp_path, epochs=1)
    proc = _private_tmpfs(
        tmp_path,
        "2m",
        f'cp -a "{trained}/data" "$MNT/data"\nmkdir "$MNT/run"\nmv "$MNT/data" "$MNT/run/"\n'
        'dd if=/dev/zero of="$MNT/fill" bs=4k 2>/dev/null || true\n'
        f'exec "{sys.executable}" -m cxrlab train "$MNT/run" --config "{config}" --name m',
    )
    proc_error(proc, "No space left on device", str(tmp_path / "mnt" / "run"), "free some space")


def test_injected_full_disk_and_read_only_folder_are_one_line(copy: Path, capsys, monkeypatch):
    """The same two failures where no tmpfs can be mounted: an OSError injected where the
    file system would raise it."""

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    code, err = cli(capsys, "train", copy, "--model", "simple_cnn", "--name", "x", "--epochs", "1")
    monkeypatch.undo()
    one_error(code, err, "No space left on device", str(RunDir(copy).model("x").path))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    shutil.rmtree(RunDir(copy).models)
    monkeypatch.setattr(os, "mkdir", read_only)
    code, err = cli(capsys, "train", copy, "--model", "simple_cnn", "--name", "x", "--epochs", "1")
    monkeypatch.undo()
    one_error(code, err, "Read-only file system", str(RunDir(copy).models))


# ---- odd inputs --------------------------------------------------------------------------------
def test_dicom_listed_in_data_entry_is_prepared(peer_dicom: Path, tmp_path: Path):
    sources = sorted(peer_dicom.glob("*.dcm"))
    root, labels = tmp_path / "dicom", ["No Finding", "Effusion", "Atelectasis", "Infiltration"]
    (root / "images").mkdir(parents=True)
    rows = [ENTRY_HEADER]
    for i in range(24):
        name = f"{i + 1:08d}_000.dcm"
        (root / "images" / name).symlink_to(sources[i % len(sources)])
        rows.append(f"{name},{labels[i % 4]},0,{i + 1},50,M,PA")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    options = build(DataConfig, {"data_root": str(root), "image_size": 32})
    result = prepare(options, tmp_path / "run", progress=False)
    cache = open_cache(tmp_path / "run")
    assert (cache.n, result.n_missing) == (24, 0)
    assert cache.images.max() > 0  # decoded pixels, not an empty row


def test_empty_and_header_only_data_entry_and_implausible_age(tmp_path: Path, caplog):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is empty; a Data_Entry file starts with"):
        read_data_entry(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(ENTRY_HEADER + "\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        read_data_entry(header_only)
    old = tmp_path / "ages.csv"
    old.write_text(f"{ENTRY_HEADER}\na.png,No Finding,0,1,414,M,PA\nb.png,Effusion,0,2,60,F,AP\n")
    with caplog.at_level(logging.WARNING, logger="cxrlab"):
        frame = read_data_entry(old)
    assert frame["age"].tolist() == [414, 60]  # kept as recorded (the 2017 release has these)
    assert "1 row(s) have a Patient Age above 120, e.g. 414 at" in caplog.text
    assert "--age-max 120" in caplog.text


def test_bom_and_crlf_data_entry_reads_like_the_plain_file(tmp_path: Path):
    text = f"{ENTRY_HEADER}\na.png,No Finding,0,1,050Y,M,PA\nb.png,Effusion,1,2,61,F,AP\n"
    plain, odd = tmp_path / "plain.csv", tmp_path / "odd.csv"
    plain.write_text(text)
    odd.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    pd.testing.assert_frame_equal(read_data_entry(odd), read_data_entry(plain))


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (a decompression bomb) with no real pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * (width + 1))  # one row only
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_naming_the_file(tmp_path: Path):
    from cxrlab.data.imaging import read_square_u8
    from cxrlab.errors import ImageReadError

    bomb = _png_claiming(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(ImageReadError, match=r"bomb\.png.*DecompressionBomb"):
        read_square_u8(bomb, 32)


def test_spaces_and_unicode_in_paths_prepare_and_train(tmp_path: Path, capsys):
    root, out = _png_root(tmp_path / "dätä set" / "nih", 64), tmp_path / "rün dir" / "r 1"
    targets = ["--pathologies", "Atelectasis,Effusion", "--image-size", "32"]
    code, err = cli(capsys, "prepare", "--data-root", root, "--out", out, *targets)
    assert code == 0, err
    assert open_cache(out).n == 64
    config = _config_file(tmp_path, epochs=1)
    code, err = cli(capsys, "train", out, "--config", config, "--name", "m ü")
    assert code == 0, err
    check_readable(RunDir(out).model("m ü").best_ckpt)


def test_empty_study_yaml_is_refused(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("# nothing yet\n")
    out = tmp_path / "out"
    code, err = cli(capsys, "run", study, "--out", out, "--data-root", tmp_path / "absent")
    one_error(code, err, str(study), "is empty")
    assert not out.exists()


def test_misleading_messages_now_name_the_cause(copy: Path, tmp_path: Path, capsys):
    code, err = cli(capsys, "evaluate", tmp_path / "absent", "--model", "m")
    one_error(code, err, "absent does not exist")
    code, err = cli(capsys, "evaluate", copy, "--model", "m", "--bootstrap", "10")
    assert code == 0, err
    code, err = cli(capsys, "compare", copy, "--models", "m,ghost", "--bootstrap", "10")
    one_error(code, err, "ghost")


# ---- real data: the wrong image size, external sets --------------------------------------------
@pytest.fixture(scope="module")
def nih_run(nih_dev: Path, tmp_path_factory) -> Path:
    """200 real images at 64 px, model `cnn` trained on them for one epoch."""
    run = tmp_path_factory.mktemp("nih") / "r"
    options = build(DataConfig, {"data_root": str(nih_dev), "n_images": 200, "image_size": 64})
    prepare(options, run, progress=False)
    config = load_yaml(_config_file(run.parent, epochs=1))
    train_model(run, config, name="cnn", progress_bar=False)
    return run


def test_reprepare_at_another_size_is_refused_and_evaluate_refuses_the_model(
    nih_run: Path, nih_dev: Path, tmp_path: Path, capsys
):
    run = tmp_path / "r"
    shutil.copytree(nih_run, run)
    again = ["prepare", "--data-root", nih_dev, "--out", run, "--n-images", "200"]
    code, err = cli(capsys, *again, "--image-size", "96")
    one_error(code, err, "holds trained models (cnn)", "image size (64 -> 96)", "--overwrite")
    assert open_cache(run).size == 64  # nothing was replaced
    code, err = cli(capsys, *again, "--image-size", "64")  # the same data again is fine
    assert code == 0, err
    code, err = cli(capsys, *again, "--image-size", "96", "--overwrite")
    assert code == 0, err
    code, err = cli(capsys, "evaluate", run, "--model", "cnn", "--bootstrap", "10")
    one_error(code, err, "trained on 64 px images", "96 px")
    assert not RunDir(run).evaluation("cnn", "test").metrics.exists()


def _external_root(folder: Path, nih_dev: Path, entries: pd.DataFrame) -> Path:
    (folder / "images").mkdir(parents=True)
    entries.to_csv(folder / "Data_Entry_2017.csv", index=False)
    for name in entries["Image Index"]:
        (folder / "images" / name).symlink_to(nih_dev / "images" / name)
    return folder


def test_external_set_overlapping_the_cohort_leaves_the_overlap_out_and_says_so(
    nih_run: Path, nih_dev: Path, tmp_path: Path, caplog
):
    from cxrlab.evaluate.workflow import evaluate_model

    cohort = pd.read_csv(RunDir(nih_run).cohort, dtype=str)
    entries = pd.read_csv(nih_dev / "Data_Entry_2017.csv", dtype=str)
    in_cohort = entries["Image Index"].isin(cohort["Image Index"])
    of_patients = entries["Patient ID"].astype(int).isin(cohort["Patient ID"].astype(int))
    split = dict(zip(cohort["Image Index"], cohort["split"], strict=True))
    own = pd.concat(
        [entries[in_cohort & entries["Image Index"].map(split).eq(s)].head(k) for s, k in
         (("train", 10), ("val", 5), ("test", 5))]
    )  # fmt: skip
    relatives = entries[of_patients & ~in_cohort]
    others = entries[~of_patients].head(40)
    root = _external_root(tmp_path / "ext", nih_dev, pd.concat([own, relatives, others]))
    with caplog.at_level(logging.WARNING, logger="cxrlab"):
        evaluate_model(nih_run, "cnn", EvaluateConfig(bootstrap=10), data_root=root, progress=False)
    out = RunDir(nih_run).external("cnn", root)
    assert len(pd.read_csv(out.predictions)) == 40
    dropped = json.loads(out.predictions_meta.read_text())["dropped_overlap"]
    assert dropped == {
        "images": 20,
        "patients": len(relatives),
        "by_split": {"train": 10, "val": 5, "test": 5},
    }
    assert f"left out {20 + len(relatives)} of {60 + len(relatives)} images" in caplog.text

    only_own = _external_root(tmp_path / "own", nih_dev, own)
    with pytest.raises(DataError, match="belongs to the run's own cohort or its patients"):
        evaluate_model(nih_run, "cnn", EvaluateConfig(bootstrap=10), data_root=only_own)


def test_prepare_refuses_an_empty_val_split(nih_dev: Path, tmp_path: Path, capsys):
    code, err = cli(
        capsys, "prepare", "--data-root", nih_dev, "--out", tmp_path / "r", "--n-images", "4"
    )
    one_error(code, err, "split(s) would be empty", "--n-images")


# ---- the table of cases ------------------------------------------------------------------------
def test_every_case_in_docs_robustness_names_an_existing_test():
    import re

    tests = Path(__file__).resolve().parent
    doc = (tests.parent / "docs" / "robustness.md").read_text()
    named = set(re.findall(r"`(test_\w+)::(test_\w+)`", doc))
    assert len(named) > 50
    missing = [
        f"{module}::{name}"
        for module, name in sorted(named)
        if not re.search(rf"^def {name}\(", (tests / f"{module}.py").read_text(), re.M)
    ]
    assert missing == []
    here = set(re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(), re.M))
    assert here - {name for module, name in named if module == "test_robustness"} == {
        "test_every_case_in_docs_robustness_names_an_existing_test"
    }  # every robustness test is a row of the table
