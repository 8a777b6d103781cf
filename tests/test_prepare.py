"""The prepare stage end to end: cohort.csv, split_summary.json, boxes.csv and the cache agree.

Runs on a tiny synthetic NIH-layout set (made here) and on the real dev set (skipped where
../shared/data is absent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlab.config import DataConfig
from cxrlab.data.cache import open_cache
from cxrlab.data.imaging import read_square_u8
from cxrlab.data.metadata import read_data_entry, read_split_lists
from cxrlab.data.prepare import PrepareResult, prepare
from cxrlab.data.rundata import load_run_data
from cxrlab.errors import ConfigError, DataError
from cxrlab.synth import write_synthetic_dataset

TARGETS = ["Atelectasis", "Effusion", "Pneumothorax"]
META = ["Finding Labels", "age", "sex", "view", "follow_up"]


def _options(root: Path, **kwargs) -> DataConfig:
    defaults = {"data_root": str(root), "pathologies": TARGETS, "image_size": 32, "seed": 0}
    return DataConfig(**{**defaults, **kwargs})


def _read(run: Path) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    data = run / "data"
    cohort = pd.read_csv(data / "cohort.csv", dtype={"Image Index": str})
    summary = json.loads((data / "split_summary.json").read_text())
    return cohort, summary, pd.read_csv(data / "boxes.csv")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "nih"
    write_synthetic_dataset(root, patients=30, seed=3, image_size=64)
    return root


@pytest.fixture(scope="module")
def synth_run(synth_root: Path, tmp_path_factory) -> tuple[Path, PrepareResult]:
    run = tmp_path_factory.mktemp("run") / "run"
    return run, prepare(_options(synth_root), run, progress=False)


# ---- synthetic data -------------------------------------------------------------------------
def test_cohort_columns_are_the_contract(synth_run):
    run, result = synth_run
    cohort, summary, _ = _read(run)
    assert list(cohort.columns) == ["Image Index", "Patient ID", "split", *TARGETS, *META]
    assert summary["targets"] == TARGETS
    assert set(cohort["split"]) == {"train", "val", "test"}
    assert cohort[TARGETS].isin([0, 1]).all().all()
    # every target column agrees with the `|`-separated labels it was parsed from
    for name in TARGETS:
        parsed = cohort["Finding Labels"].str.split("|").apply(lambda labels, n=name: n in labels)
        assert (cohort[name] == parsed.astype(int)).all(), name
    listed = read_data_entry(Path(_data_root(run)) / "Data_Entry_2017.csv")
    assert len(cohort) == len(listed)  # no filter given: every listed image is in the cohort
    returned = result.cohort  # the frame the CLI prints from is the one on disk
    assert returned["Image Index"].tolist() == cohort["Image Index"].tolist()
    assert returned["split"].tolist() == cohort["split"].tolist()
    np.testing.assert_array_equal(returned[TARGETS].to_numpy(), cohort[TARGETS].to_numpy())


def _data_root(run: Path) -> str:
    return json.loads((run / "data" / "prepare.json").read_text())["data_root"]


def test_cache_rows_are_cohort_rows_in_order(synth_run):
    run, result = synth_run
    cohort, _, _ = _read(run)
    cache = open_cache(run / "data" / "cache")
    assert len(cache) == len(cohort) == result.cache.n
    cache.check_ids(cohort["Image Index"].tolist())  # raises if ids or order differ
    root = Path(_data_root(run))
    for row in (0, len(cohort) // 2, len(cohort) - 1):  # the pixels belong to that row's id
        expected = read_square_u8(root / "images" / cohort["Image Index"][row], 32)
        np.testing.assert_array_equal(cache[row], expected)
    data = load_run_data(run)
    assert data.targets == TARGETS and data.ids.tolist() == cohort["Image Index"].tolist()
    assert data.cohort["Patient ID"].map(type).eq(str).all()  # one reader, ids as str


def test_split_is_by_patient_and_summary_counts_match(synth_run):
    run, _ = synth_run
    cohort, summary, _ = _read(run)
    assert summary["patient_overlap"] == 0
    assert cohort.groupby("Patient ID")["split"].nunique().max() == 1
    for split, part in summary["splits"].items():
        rows = cohort[cohort["split"] == split]
        assert part["images"] == len(rows)
        assert part["patients"] == rows["Patient ID"].nunique()
        assert part["positives"] == {t: int(rows[t].sum()) for t in TARGETS}
    assert summary["n_images"] == len(cohort)


def test_rerun_reuses_cache_and_keeps_split_hash(synth_root: Path, synth_run):
    run, first = synth_run
    before = (run / "data" / "cohort.csv").read_bytes()
    again = prepare(_options(synth_root), run, progress=False)
    assert again.cache.decoded == 0 and again.cache.reused == first.cache.n
    assert again.summary["split_hash"] == first.summary["split_hash"]
    assert (run / "data" / "cohort.csv").read_bytes() == before


def test_split_hash_changes_with_seed(synth_root: Path, synth_run, tmp_path: Path):
    _, first = synth_run
    other = prepare(_options(synth_root, seed=1), tmp_path / "seed1", progress=False)
    assert other.summary["split_hash"] != first.summary["split_hash"]
    assert other.summary["patient_overlap"] == 0
    options = json.loads((tmp_path / "seed1" / "data" / "prepare.json").read_text())["options"]
    assert options["seed"] == 1 and options["pathologies"] == TARGETS


def test_boxes_are_normalised_to_the_square_cache(synth_run):
    run, result = synth_run
    cohort, _, boxes = _read(run)
    assert result.n_boxes == len(boxes) > 0
    assert list(boxes.columns) == [
        "Image Index",
        "label",
        "x",
        "y",
        "w",
        "h",
        "x0",
        "y0",
        "x1",
        "y1",
    ]
    assert set(boxes["Image Index"]) <= set(cohort["Image Index"])
    coords = boxes[["x0", "y0", "x1", "y1"]].to_numpy()
    assert ((coords >= 0) & (coords <= 1)).all()
    assert (boxes["x1"] > boxes["x0"]).all() and (boxes["y1"] > boxes["y0"]).all()
    # NIH frame is 1024 x 1024, already square: normalising is a division by 1024
    np.testing.assert_allclose(boxes["x0"], boxes["x"] / 1024, atol=1e-9)
    np.testing.assert_allclose(boxes["y1"], np.minimum(boxes["y"] + boxes["h"], 1024) / 1024)


def test_missing_image_fails_with_count_or_is_dropped(synth_root: Path, tmp_path: Path):
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    listed = read_data_entry(root / "Data_Entry_2017.csv")
    gone = listed["Image Index"].iloc[5]
    (root / "images" / gone).unlink()
    with pytest.raises(DataError, match=rf"1 of {len(listed)} listed images are not under"):
        prepare(_options(root), tmp_path / "strict", progress=False)
    assert not (tmp_path / "strict" / "data" / "cohort.csv").exists()
    result = prepare(_options(root, drop_missing=True), tmp_path / "lenient", progress=False)
    assert result.n_missing == 1
    cohort, _, _ = _read(tmp_path / "lenient")
    assert len(cohort) == len(listed) - 1 and gone not in set(cohort["Image Index"])
    provenance = json.loads((tmp_path / "lenient" / "data" / "prepare.json").read_text())
    assert provenance["dropped_missing"] == 1


def test_no_data_root_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="data root"):
        prepare(DataConfig(), tmp_path, progress=False)


# ---- the real dev set -----------------------------------------------------------------------
def test_prepare_dev_subset(nih_dev: Path, tmp_path: Path):
    run = tmp_path / "dev"
    result = prepare(_options(nih_dev, n_images=300, image_size=64), run, progress=False)
    cohort, summary, boxes = _read(run)
    assert list(cohort.columns) == ["Image Index", "Patient ID", "split", *TARGETS, *META]
    assert 280 <= len(cohort) <= 320  # whole patients: close to, not exactly, 300
    assert summary["patient_overlap"] == 0
    assert cohort.groupby("Patient ID")["split"].nunique().max() == 1
    cache = open_cache(run / "data" / "cache")
    cache.check_ids(cohort["Image Index"].tolist())
    assert cache.images.shape == (len(cohort), 64, 64)
    row = len(cohort) // 3
    expected = read_square_u8(nih_dev / "images" / cohort["Image Index"][row], 64)
    np.testing.assert_array_equal(cache[row], expected)
    coords = boxes[["x0", "y0", "x1", "y1"]].to_numpy()
    assert ((coords >= 0) & (coords <= 1)).all()
    assert (
        prepare(_options(nih_dev, n_images=300, image_size=64), run, progress=False).cache.decoded
        == 0
    )
    assert result.summary["split_hash"] == summary["split_hash"]


def test_official_split_on_dev_puts_official_test_list_in_test(nih_dev: Path, tmp_path: Path):
    run = tmp_path / "official"
    result = prepare(_options(nih_dev, split="official"), run, progress=False)
    cohort, summary, boxes = _read(run)
    lists = read_split_lists(nih_dev)
    assert len(cohort) == 1108
    test_ids = set(cohort.loc[cohort["split"] == "test", "Image Index"])
    assert test_ids == lists["test"] and len(test_ids) == 150
    assert set(cohort.loc[cohort["split"] != "test", "Image Index"]) == lists["train_val"]
    assert summary["patient_overlap"] == 0 and summary["splits"]["val"]["images"] > 0
    assert result.n_boxes == len(boxes) == 41  # every dev box belongs to a dev image
    assert set(boxes["Image Index"]) <= test_ids  # NIH boxes are all on official-test images


def test_boxes_of_a_non_square_image_follow_its_real_size_and_padding(tmp_path: Path):
    """Issue 10, finding 7: a fixed 1024 x 1024 frame is wrong for a non-square source."""
    from PIL import Image

    from cxrlab.data.cache import box_to_cache_coords
    from cxrlab.data.prepare import box_frame

    wide = tmp_path / "wide.png"
    Image.new("L", (512, 256)).save(wide)  # padded to 512 x 512: 128 px of black above
    square = tmp_path / "square.png"
    Image.new("L", (256, 256)).save(square)  # NIH/synth: boxes in the 1024 frame
    assert box_frame(wide) == (1024, 512) and box_frame(square) == (1024, 1024)
    whole = box_to_cache_coords(0, 0, 1024, 512, *box_frame(wide))
    np.testing.assert_allclose(whole, (0, 0.25, 1, 0.75))
    np.testing.assert_allclose(box_to_cache_coords(0, 0, 512, 512, *box_frame(square)),
                               (0, 0, 0.5, 0.5))  # fmt: skip
