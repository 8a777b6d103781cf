"""Cohort selection: whole patients, sampling modes, filters, determinism, counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.cohort import cooccurrence, label_counts, select_cohort
from cxrlab.data.metadata import findings_matrix, read_data_entry
from cxrlab.errors import ConfigError

TARGETS = ["Atelectasis", "Effusion"]


def frame(rows: list[tuple[int, str, int, str]]) -> pd.DataFrame:
    """Metadata frame from (patient, labels, age, view) rows; images named by patient."""
    seen: dict[int, int] = {}
    records = []
    for patient, labels, age, view in rows:
        follow_up = seen[patient] = seen.get(patient, -1) + 1
        records.append(
            {
                "Image Index": f"{patient:08d}_{follow_up:03d}.png",
                "Patient ID": patient,
                "Finding Labels": labels,
                "follow_up": follow_up,
                "age": age,
                "sex": "M" if patient % 2 else "F",
                "view": view,
            }
        )
    return pd.DataFrame(records)


@pytest.fixture
def small() -> pd.DataFrame:
    """5 patients, 9 images. Patient 1: 3 images; 2: 1; 3: 2; 4: 1; 5: 2."""
    return frame(
        [
            (1, "Atelectasis", 30, "PA"),
            (1, "No Finding", 31, "PA"),
            (1, "Atelectasis|Effusion", 32, "AP"),
            (2, "Effusion", 40, "PA"),
            (3, "No Finding", 60, "AP"),
            (3, "Hernia", 61, "AP"),
            (4, "No Finding", 39, "PA"),
            (5, "Effusion|Mass", 50, "PA"),
            (5, "No Finding", 50, "PA"),
        ]
    )


def many(n_patients: int = 400, rare_every: int = 10) -> pd.DataFrame:
    """Patients with 1-3 images; Atelectasis on every `rare_every`-th patient's first image."""
    rows = []
    for p in range(1, n_patients + 1):
        for i in range(1 + p % 3):
            label = "Atelectasis" if (p % rare_every == 0 and i == 0) else "No Finding"
            if p % 7 == 0 and i == 0:
                label = "Effusion" if label == "No Finding" else label + "|Effusion"
            rows.append((p, label, 20 + p % 60, "PA" if p % 2 else "AP"))
    return frame(rows)


def images_per_patient(df: pd.DataFrame) -> pd.Series:
    return df.groupby("Patient ID").size()


def test_whole_patients_and_exact_size(small):
    cohort = select_cohort(small, TARGETS, n_images=4, seed=3)
    assert len(cohort) == 4
    full = images_per_patient(small)
    got = images_per_patient(cohort)
    assert (got == full.loc[got.index]).all()  # every chosen patient comes with all images
    assert cohort["Image Index"].is_monotonic_increasing and cohort.index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(6))
def test_never_more_than_n_images(seed):
    df = many(60)
    for n in (7, 50, 100):
        cohort = select_cohort(df, TARGETS, n_images=n, seed=seed)
        assert len(cohort) == n  # singles are always left to fill the last places


def test_all_images_by_default(small):
    cohort = select_cohort(small, TARGETS)
    pd.testing.assert_frame_equal(cohort, small)


def test_one_per_patient(small):
    cohort = select_cohort(small, TARGETS, one_per_patient=True, seed=1)
    assert sorted(cohort["Patient ID"]) == [1, 2, 3, 4, 5]
    assert set(cohort["Image Index"]) <= set(small["Image Index"])
    assert len(select_cohort(small, TARGETS, n_images=3, one_per_patient=True)) == 3


def test_one_per_patient_enriched_prefers_a_positive_image(small):
    cohort = select_cohort(small, TARGETS, one_per_patient=True, sampling="enriched", seed=0)
    # patients 1, 2 and 5 have a positive image, so that is the one kept
    positive = findings_matrix(cohort, TARGETS).any(axis=1)
    assert dict(zip(cohort["Patient ID"], positive, strict=True)) == {
        1: True,
        2: True,
        3: False,
        4: False,
        5: True,
    }


def test_enriched_reaches_min_positives_where_natural_does_not():
    df = many(400, rare_every=20)  # 20 Atelectasis images among ~800
    natural = select_cohort(df, ["Atelectasis"], n_images=100, seed=0)
    enriched = select_cohort(
        df, ["Atelectasis"], n_images=100, sampling="enriched", min_positives=12, seed=0
    )
    assert findings_matrix(natural, ["Atelectasis"]).sum() < 12
    assert findings_matrix(enriched, ["Atelectasis"]).sum() >= 12
    assert len(enriched) == 100


def test_enriched_fill_is_random_not_starved_of_positives():
    # 1,000 single-image patients, 100 positive. Drawing 50 positives walks about half of
    # the random order; a fill of 350 more should then bring ~350 * 50/950 = 18 positives.
    # Reusing the enrichment's order for the fill would bring none: every positive patient
    # early in that order was already taken.
    df = frame([(p, "Atelectasis" if p % 10 == 0 else "No Finding", 50, "PA") for p in range(1000)])
    cohort = select_cohort(
        df, ["Atelectasis"], n_images=400, sampling="enriched", min_positives=50, seed=0
    )
    assert 58 <= findings_matrix(cohort, ["Atelectasis"]).sum() <= 80


def test_enriched_cannot_supply_says_what_is_available(small):
    with pytest.raises(ConfigError, match=r"Atelectasis: 2") as err:
        select_cohort(small, TARGETS, n_images=8, sampling="enriched", min_positives=3)
    assert "Effusion" not in str(err.value).split("available:")[1]  # 3 Effusion: enough


def test_enriched_too_small_cohort_is_an_error(small):
    with pytest.raises(ConfigError, match="n_images=2 is too small"):
        select_cohort(small, ["Atelectasis"], n_images=2, sampling="enriched", min_positives=2)


def test_option_errors(small):
    with pytest.raises(ConfigError, match="n_images=10 but only 9"):
        select_cohort(small, TARGETS, n_images=10)
    with pytest.raises(ConfigError, match="n_images=6 but only 5 .*one per patient"):
        select_cohort(small, TARGETS, n_images=6, one_per_patient=True)
    with pytest.raises(ConfigError, match="applies to sampling='enriched' only"):
        select_cohort(small, TARGETS, min_positives=3)
    with pytest.raises(ConfigError, match="sampling='balanced'"):
        select_cohort(small, TARGETS, sampling="balanced")
    with pytest.raises(ConfigError, match="unknown pathology 'Fracture'"):
        select_cohort(small, ["Fracture"])
    with pytest.raises(ConfigError, match="subset of"):
        select_cohort(small, TARGETS, views={"LL"})
    with pytest.raises(ConfigError, match="min 70 is above max 20"):
        select_cohort(small, TARGETS, age_range=(70, 20))
    with pytest.raises(ConfigError, match="no image passes"):
        select_cohort(small, TARGETS, age_range=(90, 99))


def test_filters_apply_before_sampling(small):
    pa = select_cohort(small, TARGETS, views={"pa"})
    assert set(pa["view"]) == {"PA"} and len(pa) == 6
    aged = select_cohort(small, TARGETS, age_range=(40, 60))  # inclusive bounds
    assert sorted(aged["age"]) == [40, 50, 50, 60]


def test_same_seed_same_cohort_other_seed_differs():
    df = many(200)
    a = select_cohort(df, TARGETS, n_images=100, seed=7)
    b = select_cohort(df, TARGETS, n_images=100, seed=7)
    c = select_cohort(df, TARGETS, n_images=100, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["Patient ID"]) != set(c["Patient ID"])


def test_row_order_does_not_change_the_cohort():
    df = many(200)
    shuffled = df.sample(frac=1.0, random_state=1)
    for kw in ({}, {"one_per_patient": True}, {"sampling": "enriched", "min_positives": 10}):
        a = select_cohort(df, TARGETS, n_images=90, seed=2, **kw)
        b = select_cohort(shuffled, TARGETS, n_images=90, seed=2, **kw)
        pd.testing.assert_frame_equal(a, b)


def test_label_counts_and_cooccurrence(small):
    counts = label_counts(small, ["Atelectasis", "Effusion", "Hernia"])
    assert counts["images"].tolist() == [2, 3, 1]
    assert counts["patients"].tolist() == [1, 3, 1]
    np.testing.assert_allclose(counts["prevalence"], [2 / 9, 3 / 9, 1 / 9])
    both = cooccurrence(small, ["Atelectasis", "Effusion", "Hernia"])
    np.testing.assert_array_equal(both.to_numpy(), [[2, 1, 0], [1, 3, 0], [0, 0, 1]])
    assert list(both.index) == ["Atelectasis", "Effusion", "Hernia"]


def test_full_metadata_selection(nih_metadata):
    df = read_data_entry(nih_metadata / "Data_Entry_2017_v2020.csv.gz")
    targets = ["Atelectasis", "Effusion", "Infiltration", "Pneumothorax"]
    cohort = select_cohort(df, targets, n_images=10_000, seed=0)
    assert len(cohort) == 10_000
    full = images_per_patient(df)
    got = images_per_patient(cohort)
    assert (got == full.loc[got.index]).all()
    enriched = select_cohort(
        df, targets, n_images=5_000, one_per_patient=True, sampling="enriched", seed=0
    )
    assert (label_counts(enriched, targets)["images"] >= 500).all()  # default: 10% of 5,000
    assert enriched["Patient ID"].is_unique
