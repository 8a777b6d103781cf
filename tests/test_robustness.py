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
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.config import DataConfig, build, load_yaml
from cxrlab.data.cache import DONE_FILE, IMAGES_FILE, build_cache, open_cache
from cxrlab.data.prepare import prepare
from cxrlab.errors import DataError
from cxrlab.locking import exclusive
from cxrlab.models.checkpoint import check_readable
from cxrlab.rundir import RunDir
from cxrlab.train.engine import train_model
from helpers_robust import cli, config_file, env, one_error, png_root, pngs, proc_error, python
from helpers_run import make_tiny_run


def _metrics(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(RunDir(run).model(name).metrics_csv).drop(columns="seconds")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


#: `cxrlab ARGS` with a callback that sends this process SIGNAL when epoch 1 starts: a real
#: signal through the real handlers, at a moment the test knows.
_SIGNAL_AT_EPOCH_1 = """
import os, signal, sys
import lightning as L
from cxrlab.train import engine
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
from cxrlab.train import engine
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
    train_model(run, load_yaml(config_file(run.parent, epochs=2)), name="m", progress_bar=False)
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
    config = config_file(tmp_path)
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
    config = config_file(tmp_path)
    proc = python(
        "-c", _SIGNAL_AT_EPOCH_1, "SIGINT", "train", run, "--config", config, "--name", "m"
    )
    proc_error(proc, "Ctrl-C", "interrupted at epoch 1", "--resume", exit_code=130)
    assert "Detected KeyboardInterrupt" not in proc.stderr


# ---- locks -------------------------------------------------------------------------------------
def test_two_concurrent_trains_of_one_model_one_is_refused(tmp_path: Path, capsys):
    run = make_tiny_run(tmp_path, n=64, size=32)
    config, flag = config_file(tmp_path, epochs=1), tmp_path / "go"
    lock = RunDir(run).model("m").lock
    args = ["-c", _WAIT_FOR_FLAG, flag, "train", run, "--config", config, "--name", "m"]
    first = subprocess.Popen(
        [sys.executable, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
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
#: The forkserver preloads `stuck_reader` (written by the test), so every worker has it.
_BUILD_TWO_WORKERS = """
import json, multiprocessing, sys
from pathlib import Path
import cxrlab.data.cache as cache
multiprocessing.get_context("forkserver").set_forkserver_preload(["stuck_reader"])
paths, out = json.loads(sys.argv[1]), Path(sys.argv[2])
def progress(done, total):
    pids = [p.pid for p in multiprocessing.active_children()]
    (out.parent / "workers.json").write_text(json.dumps(pids))
cache.build_cache(paths, [Path(p).name for p in paths], out, size=16, workers=2, progress=progress)
"""

#: In the workers: reading the image named $CXRLAB_TEST_STUCK never ends (a hung NFS read).
_STUCK_READER = """
import os, time
import cxrlab.data.cache as cache
read = cache.read_square_u8
def read_or_hang(path, size):
    if os.path.basename(str(path)) == os.environ["CXRLAB_TEST_STUCK"]:
        time.sleep(3600)
    return read(path, size)
cache.read_square_u8 = read_or_hang
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _pids_with_env(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (the ones this test started)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_two_worker_cache_build_keeps_finished_rows_and_its_workers_die(tmp_path: Path):
    """One image hangs its worker for good; the other 7 of 8 tasks (8 rows each) finish.
    Their rows must be marked done while the build still runs, and survive a SIGKILL."""
    n, chunk, stuck = 64, 8, 60
    paths = pngs(tmp_path / "images", n)
    (tmp_path / "stuck_reader.py").write_text(_STUCK_READER)
    marker = f"cxrlab-test-{os.getpid()}-{time.monotonic_ns()}"
    build_env = {
        **env(),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "CXRLAB_TEST_STUCK": paths[stuck].name,
        "CXRLAB_TEST_MARKER": marker,
    }
    cache = tmp_path / "cache"
    builder = subprocess.Popen(
        [sys.executable, "-c", _BUILD_TWO_WORKERS, json.dumps(list(map(str, paths))), cache],
        env=build_env,
    )
    done_file, workers_file = cache / DONE_FILE, tmp_path / "workers.json"
    try:
        deadline, done = time.monotonic() + 60, 0
        while time.monotonic() < deadline and builder.poll() is None:
            if done_file.is_file() and done_file.stat().st_size == n:
                done = int(np.count_nonzero(np.fromfile(done_file, dtype=np.uint8)))
            if done == n - chunk and workers_file.is_file():
                break
            time.sleep(0.1)
        assert builder.poll() is None, "the build ended by itself"
        assert done == n - chunk, f"{done} rows marked done while the build runs"
        workers = json.loads(workers_file.read_text())
        assert len(workers) == 2
        builder.kill()
        builder.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in workers), "cache workers outlived the killed build"
    finally:
        builder.kill()
        builder.wait()
        for pid in _pids_with_env(marker):  # what old code leaves behind: its workers
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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


def test_sigterm_during_prepare_exits_143_and_the_rerun_keeps_the_decoded_rows(tmp_path: Path):
    root, out = png_root(tmp_path / "nih", 64), tmp_path / "run"
    args = ["prepare", "--data-root", root, "--out", out, "--image-size", "32"]
    proc = python("-c", _SIGTERM_AT_IMAGE_40, *args)
    proc_error(proc, "stopped by SIGTERM", "run the same command again", exit_code=143)
    options = build(DataConfig, {"data_root": str(root), "image_size": 32})
    cache = prepare(options, out, progress=False).cache  # one worker: tasks of 64 // 4 rows
    assert (cache.reused, cache.decoded) == (32, 32)


def test_cache_checks_free_space_before_decoding(tmp_path: Path, monkeypatch):
    paths = pngs(tmp_path / "images", 4)
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
        env=env(),
        timeout=300,
    )
    if proc.returncode == 77 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    return proc


def test_read_only_run_directory_is_one_line(trained: Path, tmp_path: Path):
    config = config_file(tmp_path, epochs=1)
    proc = _private_tmpfs(
        tmp_path,
        "8m",
        f'cp -a "{trained}" "$MNT/run"\nmount -o remount,ro "$MNT"\n'
        f'exec "{sys.executable}" -m cxrlab train "$MNT/run" --config "{config}" --name m2',
    )
    proc_error(proc, "Read-only file system", str(tmp_path / "mnt" / "run"))


def test_full_disk_during_training_is_one_line(trained: Path, tmp_path: Path):
    config = config_file(tmp_path, epochs=1)
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


# ---- messages ----------------------------------------------------------------------------------
def test_misleading_messages_now_name_the_cause(copy: Path, tmp_path: Path, capsys):
    code, err = cli(capsys, "evaluate", tmp_path / "absent", "--model", "m")
    one_error(code, err, "absent does not exist")
    code, err = cli(capsys, "evaluate", copy, "--model", "m", "--bootstrap", "10")
    assert code == 0, err
    code, err = cli(capsys, "compare", copy, "--models", "m,ghost", "--bootstrap", "10")
    one_error(code, err, "ghost")


# ---- the table of cases ------------------------------------------------------------------------
def test_every_case_in_docs_robustness_names_an_existing_test():
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
    rows = {f"{module}::{name}" for module, name in named}
    unlisted = [
        f"{path.stem}::{name}"
        for path in sorted(tests.glob("test_robustness*.py"))
        for name in re.findall(r"^def (test_\w+)\(", path.read_text(), re.M)
        if f"{path.stem}::{name}" not in rows
    ]  # every robustness test is a row of the table
    assert unlisted == [
        "test_robustness::test_every_case_in_docs_robustness_names_an_existing_test"
    ]
