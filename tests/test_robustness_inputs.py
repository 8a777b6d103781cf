"""Robustness (issue 11) with odd inputs and real data: DICOM in Data_Entry, empty and odd
metadata files, decompression bombs, unicode paths, empty studies, a model on a cache of
another size, external sets that overlap the run's cohort. docs/robustness.md lists the
cases; test_robustness.py checks that each one it names exists.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest

from cxrlab.config import DataConfig, EvaluateConfig, build, load_yaml
from cxrlab.data.cache import open_cache
from cxrlab.data.imaging import read_square_u8
from cxrlab.data.metadata import read_data_entry
from cxrlab.data.prepare import prepare
from cxrlab.errors import DataError, ImageReadError
from cxrlab.models.checkpoint import check_readable
from cxrlab.rundir import RunDir
from cxrlab.train.engine import train_model
from helpers_robust import ENTRY_HEADER, cli, config_file, one_error, png_root


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

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * (width + 1))  # one row only
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_naming_the_file(tmp_path: Path):
    bomb = _png_claiming(tmp_path / "bomb.png", 40_000, 40_000)
    with pytest.raises(ImageReadError, match=r"bomb\.png.*decompression bomb"):
        read_square_u8(bomb, 32)


def test_spaces_and_unicode_in_paths_prepare_and_train(tmp_path: Path, capsys):
    root, out = png_root(tmp_path / "dätä set" / "nih", 64), tmp_path / "rün dir" / "r 1"
    targets = ["--pathologies", "Atelectasis,Effusion", "--image-size", "32"]
    code, err = cli(capsys, "prepare", "--data-root", root, "--out", out, *targets)
    assert code == 0, err
    assert open_cache(out).n == 64
    config = config_file(tmp_path, epochs=1)
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


# ---- real data: the wrong image size, external sets --------------------------------------------
@pytest.fixture(scope="module")
def nih_run(nih_dev: Path, tmp_path_factory) -> Path:
    """200 real images at 64 px, model `cnn` trained on them for one epoch."""
    run = tmp_path_factory.mktemp("nih") / "r"
    options = build(DataConfig, {"data_root": str(nih_dev), "n_images": 200, "image_size": 64})
    prepare(options, run, progress=False)
    config = load_yaml(config_file(run.parent, epochs=1))
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
