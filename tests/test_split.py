"""Patient-wise splits, the official split, leakage checks, split hash and summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.cohort import select_cohort
from cxrlab.data.metadata import findings_matrix, read_data_entry, read_split_lists
from cxrlab.data.split import (
    check_leakage,
    official_split,
    split_hash,
    split_patients,
    split_summary,
    stratify_weighted,
)
from cxrlab.errors import ConfigError, DataError, LeakageError

TARGETS = ["Atelectasis", "Effusion"]
FOUR = ["Atelectasis", "Effusion", "Infiltration", "Pneumothorax"]


def frame(rows: list[tuple[int, str]]) -> pd.DataFrame:
    """(patient, Finding Labels) rows; Image Index from patient and follow-up."""
    seen: dict[int, int] = {}
    records = []
    for patient, labels in rows:
        follow_up = seen[patient] = seen.get(patient, -1) + 1
        name = f"{patient:08d}_{follow_up:03d}.png"
        records.append({"Image Index": name, "Patient ID": patient, "Finding Labels": labels})
    return pd.DataFrame(records)


def population(n_patients: int = 300) -> pd.DataFrame:
    """Patients with 1-4 images; ~20% Atelectasis and ~1/7 Effusion patients."""
    rows = []
    for p in range(n_patients):
        for i in range(1 + p % 4):
            names = [n for n, hit in (("Atelectasis", p % 5 == 0), ("Effusion", p % 7 == i)) if hit]
            rows.append((p, "|".join(names) or "No Finding"))
    return frame(rows)


# --- the stratifier on hand-worked inputs --------------------------------------------------


def test_stratify_weighted_hand_worked():
    # 10 single-image patients, 5 positive; ratios 60/20/20 want 3/1/1 positives, 6/2/2 images.
    sizes = np.ones(10, dtype=np.int64)
    counts = np.array([[1]] * 5 + [[0]] * 5)
    for seed in range(5):
        part = stratify_weighted(
            sizes, counts, np.array([0.6, 0.2, 0.2]), np.random.default_rng(seed)
        )
        assert np.bincount(part[:5], minlength=3).tolist() == [3, 1, 1]
        assert np.bincount(part, minlength=3).tolist() == [6, 2, 2]


def test_stratify_weighted_counts_images_not_patients():
    # 50 patients with 4 images and 150 with 1: halving the *patients* could give anything
    # from 100 to 250 images per half; halving the images wants 175 each.
    sizes = np.array([4] * 50 + [1] * 150)
    counts = np.zeros((200, 1), dtype=np.int64)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        part = stratify_weighted(sizes, counts, np.array([0.5, 0.5, 0.0]), rng)
        images = np.bincount(part, weights=sizes, minlength=3)
        assert abs(images[0] - 175) <= 2 and images[2] == 0  # the 0 part stays empty


def test_patients_without_positive_target_are_spread_by_ratio():
    df = frame([(p, "No Finding") for p in range(200)])
    split = split_patients(df, TARGETS, val=0.1, test=0.2, seed=0)
    assert split.value_counts().to_dict() == {"train": 140, "test": 40, "val": 20}


# --- split_patients -----------------------------------------------------------------------


def test_split_patients_by_patient_with_balanced_images_and_prevalence():
    df = population(300)
    split = split_patients(df, TARGETS, val=0.15, test=0.15, seed=0)
    assert split.name == "split" and split.index.equals(df.index)
    assert check_leakage(df.assign(split=split)) == 0
    shares = split.value_counts(normalize=True)
    np.testing.assert_allclose(shares[["train", "val", "test"]], [0.7, 0.15, 0.15], atol=0.01)
    y = findings_matrix(df, TARGETS)  # (N, 2)
    for part in ("train", "val", "test"):
        np.testing.assert_allclose(
            y[(split == part).to_numpy()].mean(axis=0), y.mean(axis=0), atol=0.02
        )


def test_split_is_seeded_and_independent_of_row_order():
    df = population(200)
    a = split_patients(df, TARGETS, seed=4)
    shuffled = df.sample(frac=1.0, random_state=0)
    b = split_patients(shuffled, TARGETS, seed=4)
    pd.testing.assert_series_equal(a, b.loc[df.index])
    c = split_patients(df, TARGETS, seed=5)
    assert not a.equals(c)


def test_split_fraction_errors():
    df = population(20)
    with pytest.raises(ConfigError, match=r"val=0\.6 \+ test=0\.5"):
        split_patients(df, TARGETS, val=0.6, test=0.5)
    with pytest.raises(ConfigError, match="test=-0.1"):
        split_patients(df, TARGETS, test=-0.1)


# --- leakage, hash, summary ---------------------------------------------------------------


def test_leakage_check_names_count_and_patients():
    df = frame(
        [
            (1, "No Finding"),
            (1, "Effusion"),
            (2, "No Finding"),
            (3, "No Finding"),
            (3, "Atelectasis"),
        ]
    )
    df["split"] = ["train", "test", "val", "val", "train"]
    with pytest.raises(LeakageError, match=r"2 patient\(s\).*first Patient IDs: 1, 3"):
        check_leakage(df)
    df["split"] = ["train", "train", "val", "test", "test"]
    assert check_leakage(df) == 0
    with pytest.raises(DataError, match="no 'fold' column"):
        check_leakage(df, split_col="fold")


def test_split_hash_stable_under_row_order_and_sensitive_to_content():
    df = population(50)
    df["split"] = split_patients(df, TARGETS, seed=0)
    h = split_hash(df, TARGETS)
    assert len(h) == 64
    assert split_hash(df.sample(frac=1.0, random_state=3), TARGETS) == h
    assert split_hash(df, list(reversed(TARGETS))) != h
    moved = df.copy()
    moved.loc[0, "split"] = "test" if moved.loc[0, "split"] != "test" else "val"
    assert split_hash(moved, TARGETS) != h


def test_split_summary_hand_worked():
    df = frame([(1, "Atelectasis"), (1, "No Finding"), (2, "Effusion"), (3, "No Finding")])
    df["split"] = ["train", "train", "val", "test"]
    summary = split_summary(df, TARGETS)
    json.dumps(summary)  # JSON-ready
    assert summary["n_images"] == 4 and summary["n_patients"] == 3
    assert summary["splits"]["train"]["images"] == 2 and summary["splits"]["train"]["patients"] == 1
    assert summary["splits"]["train"]["prevalence"] == {"Atelectasis": 0.5, "Effusion": 0.0}
    assert summary["splits"]["val"]["positives"] == {"Atelectasis": 0, "Effusion": 1}
    assert summary["patient_overlap"] == 0 and summary["split_hash"] == split_hash(df, TARGETS)
    df.loc[3, "split"] = "train"
    df.loc[1, "split"] = "test"  # patient 1 now straddles train and test
    assert split_summary(df, TARGETS)["patient_overlap"] == 1


# --- official split -----------------------------------------------------------------------


def test_official_split_uses_exactly_the_test_list():
    df = population(100)
    names = df["Image Index"]
    test_patients = set(range(0, 100, 5))
    is_test = df["Patient ID"].isin(test_patients)
    lists = {"test": set(names[is_test]), "train_val": set(names[~is_test])}
    split = official_split(df, lists, TARGETS, val=0.2, seed=0)
    assert set(names[split == "test"]) == lists["test"]
    train_val = split[~is_test]
    assert set(train_val) == {"train", "val"}
    assert abs((train_val == "val").mean() - 0.2) < 0.02
    assert check_leakage(df.assign(split=split)) == 0


def test_official_split_errors():
    df = frame([(1, "No Finding"), (1, "Effusion"), (2, "No Finding")])
    names = list(df["Image Index"])
    with pytest.raises(LeakageError, match="first Patient IDs: 1"):
        official_split(df, {"test": {names[0]}, "train_val": set(names[1:])})
    with pytest.raises(DataError, match=r"1 image\(s\) are in neither.*00000002_000.png"):
        official_split(df, {"test": set(), "train_val": set(names[:2])})


# --- real data ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(nih_metadata) -> pd.DataFrame:
    return read_data_entry(nih_metadata / "Data_Entry_2017_v2020.csv.gz")


@pytest.mark.parametrize("n_images", [None, 10_000])
def test_full_metadata_split_has_no_overlap_and_even_prevalence(full, n_images):
    cohort = select_cohort(full, FOUR, n_images=n_images, seed=0)
    cohort["split"] = split_patients(cohort, FOUR, seed=0)
    summary = split_summary(cohort, FOUR)
    assert summary["patient_overlap"] == 0
    overall = findings_matrix(cohort, FOUR).mean(axis=0)
    for part in ("train", "val", "test"):
        prevalence = np.array(list(summary["splits"][part]["prevalence"].values()))
        # bench_split: <= 0.03 points on all images, <= 1.5 points on 10,000 (10 seeds)
        np.testing.assert_allclose(prevalence, overall, atol=0.01 if n_images is None else 0.03)
        share = summary["splits"][part]["images"] / len(cohort)
        assert abs(share - {"train": 0.7, "val": 0.15, "test": 0.15}[part]) < 0.01


def test_full_official_split(full, nih_metadata):
    lists = read_split_lists(nih_metadata)
    split = official_split(full, lists, FOUR, seed=0)
    assert set(full["Image Index"][split == "test"]) == lists["test"]
    assert (split == "val").sum() == pytest.approx(0.15 * len(lists["train_val"]), rel=0.02)
    assert check_leakage(full.assign(split=split)) == 0


def test_dev_official_split(nih_dev):
    df = read_data_entry(nih_dev / "Data_Entry_2017.csv")
    split = official_split(df, read_split_lists(nih_dev), FOUR, seed=0)
    assert (split == "test").sum() == 150 and check_leakage(df.assign(split=split)) == 0
