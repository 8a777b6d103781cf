"""Choose which images enter a study: filters, then whole patients drawn at random.

Selection is by *patient* so that a later patient-wise split can never leak: a patient is
either in the cohort with all of their (filtered) images, or with exactly one image when
`one_per_patient`, or not at all.

* `natural`: patients in a seeded random order until `n_images` is reached, so label
  prevalence follows the data set's.
* `enriched`: first, for each target (rarest first), patients with that target positive are
  drawn until the cohort holds `min_positives` positive images of it; then the cohort is
  filled with random patients as in `natural`.

Size rule: the cohort never holds more than `n_images` images. Patients are added in random
order while they fit; a patient too big for the room left is skipped and the next one that
fits is taken, so the cohort has exactly `n_images` images unless every remaining patient is
bigger than the room left (then it is a few images short).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from cxrlab.data.metadata import VIEWS, findings_matrix
from cxrlab.errors import ConfigError
from cxrlab.labels import IMAGE_INDEX, PATIENT_ID, parse_targets

log = logging.getLogger(__name__)

SAMPLINGS: tuple[str, ...] = ("natural", "enriched")
#: Default `min_positives` for enriched sampling: this share of `n_images` per target.
ENRICHED_SHARE = 0.10


def select_cohort(
    df: pd.DataFrame,
    targets: str | Sequence[str],
    *,
    n_images: int | None = None,
    one_per_patient: bool = False,
    sampling: str = "natural",
    min_positives: int | None = None,
    views: Iterable[str] | None = None,
    age_range: tuple[int, int] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Select a cohort of whole patients from `read_data_entry`'s frame.

    Args:
        targets: 1-14 names from `labels.FINDINGS` (or "all" / a comma list).
        n_images: cohort size in images; None takes every image that passes the filters.
        one_per_patient: keep one image per patient (random; with `enriched`, a random one
            among the patient's images positive for a target when there is one).
        sampling: "natural" (data set prevalence) or "enriched" (see module docstring).
        min_positives: enriched only; positive images per target to guarantee. Default:
            `ENRICHED_SHARE` of `n_images`, rounded up.
        views: keep only these view positions (e.g. {"PA"}).
        age_range: (min, max) age in years, inclusive.
        seed: seeds `numpy.random.default_rng`; same inputs and seed give the same cohort.

    Returns rows of `df`, ordered by Image Index, with a fresh 0..N-1 index.
    """
    targets = parse_targets(targets)
    min_pos = _check_sampling(sampling, n_images, min_positives)
    pool = _filter(df, views, age_range)
    rng = np.random.default_rng(seed)
    y = findings_matrix(pool, targets)  # (N, K)
    if one_per_patient:
        keep = _one_per_patient(pool[PATIENT_ID].to_numpy(), y, rng, sampling == "enriched")
        pool, y = pool.iloc[keep].reset_index(drop=True), y[keep]
    if n_images is not None and n_images > len(pool):
        raise ConfigError(
            f"n_images={n_images} but only {len(pool)} images are available"
            f"{' (one per patient)' if one_per_patient else ''} after filters"
            f" views={_show(views)}, age_range={age_range}"
        )
    patient_ids, inverse = np.unique(pool[PATIENT_ID].to_numpy(), return_inverse=True)
    sizes = np.bincount(inverse)  # (P,) images per patient
    positives = np.zeros((len(patient_ids), len(targets)), dtype=np.int64)  # (P, K)
    np.add.at(positives, inverse, y)
    chosen = np.zeros(len(patient_ids), dtype=bool)
    if sampling == "enriched":
        _enrich(positives, rng.permutation(len(patient_ids)), chosen, min_pos, targets)
        _check_enriched_fits(sizes, chosen, n_images, min_pos)
    # The fill draws a fresh order: the enrichment took every positive patient early in its
    # own order, so a fill walking that order would find none of the enriched targets.
    _fill(sizes, rng.permutation(len(patient_ids)), chosen, n_images)
    cohort = pool.loc[chosen[inverse]].reset_index(drop=True)
    log.info(
        "cohort: %d images, %d patients (%s sampling, seed %d)",
        len(cohort), int(chosen.sum()), sampling, seed,
    )  # fmt: skip
    return cohort


def _check_sampling(sampling: str, n_images: int | None, min_positives: int | None) -> int:
    """Validate the sampling options; return the effective min_positives (0 for natural)."""
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling={sampling!r} is not one of {', '.join(SAMPLINGS)}")
    if n_images is not None and (not isinstance(n_images, int | np.integer) or n_images < 1):
        raise ConfigError(f"n_images={n_images!r} should be a whole number >= 1 or None (all)")
    if sampling == "natural":
        if min_positives is not None:
            raise ConfigError(
                f"min_positives={min_positives} applies to sampling='enriched' only;"
                " drop it or choose enriched sampling"
            )
        return 0
    if min_positives is None:
        return math.ceil(ENRICHED_SHARE * n_images) if n_images else 0
    if min_positives < 0:
        raise ConfigError(f"min_positives={min_positives} should be >= 0")
    return int(min_positives)


def _filter(df: pd.DataFrame, views, age_range) -> pd.DataFrame:
    """Rows passing the view and age filters, ordered by Image Index (row order agnostic)."""
    mask = np.ones(len(df), dtype=bool)
    if views is not None:
        wanted = {str(v).strip().upper() for v in views}
        if not wanted or not wanted <= set(VIEWS):
            raise ConfigError(f"views={_show(views)} should be a non-empty subset of {VIEWS}")
        mask &= df["view"].isin(wanted).to_numpy()
    if age_range is not None:
        low, high = age_range
        if low > high:
            raise ConfigError(f"age_range=({low}, {high}): min {low} is above max {high}")
        mask &= df["age"].between(low, high).to_numpy()
    if not mask.any():
        raise ConfigError(
            f"no image passes the filters views={_show(views)}, age_range={age_range}"
            f" ({len(df)} images before filtering)"
        )
    return df.loc[mask].sort_values(IMAGE_INDEX, kind="stable").reset_index(drop=True)


def _one_per_patient(
    patients: np.ndarray, y: np.ndarray, rng: np.random.Generator, prefer_positive: bool
) -> np.ndarray:
    """Row positions of one random image per patient (positive ones first if asked)."""
    random_key = rng.random(len(patients))
    negative = ~y.any(axis=1) if prefer_positive else np.zeros(len(patients), dtype=bool)
    rows = np.lexsort((random_key, negative, patients))  # by patient, positive first, random
    first = np.r_[True, patients[rows][1:] != patients[rows][:-1]]
    return np.sort(rows[first])


def _enrich(
    positives: np.ndarray,
    order: np.ndarray,
    chosen: np.ndarray,
    min_pos: int,
    targets: Sequence[str],
) -> None:
    """Mark patients (in random order) until each target has `min_pos` positive images."""
    available = positives.sum(axis=0)
    short = [f"{t}: {n}" for t, n in zip(targets, available, strict=True) if n < min_pos]
    if short:
        raise ConfigError(
            f"enriched sampling needs min_positives={min_pos} positive images per target,"
            f" but after filters only these are available: {', '.join(short)};"
            " lower min_positives, relax the filters or drop those targets"
        )
    for k in np.argsort(available, kind="stable"):  # rarest target first
        need = min_pos - positives[chosen, k].sum()
        if need <= 0:
            continue
        candidates = order[(positives[order, k] > 0) & ~chosen[order]]
        reached = np.cumsum(positives[candidates, k])  # positives gathered so far
        chosen[candidates[: np.searchsorted(reached, need) + 1]] = True


def _check_enriched_fits(
    sizes: np.ndarray, chosen: np.ndarray, n_images: int | None, min_pos: int
) -> None:
    taken = int(sizes[chosen].sum())
    if n_images is not None and taken > n_images:
        raise ConfigError(
            f"n_images={n_images} is too small for min_positives={min_pos} per target:"
            f" the patients drawn to reach it already hold {taken} images;"
            " raise n_images, lower min_positives or use one_per_patient"
        )


def _fill(sizes: np.ndarray, order: np.ndarray, chosen: np.ndarray, n_images: int | None) -> None:
    """Add unchosen patients in `order` while they fit in `n_images` (None: add all)."""
    if n_images is None:
        chosen[:] = True
        return
    room = n_images - int(sizes[chosen].sum())
    rest = order[~chosen[order]]
    fits = np.cumsum(sizes[rest]) <= room
    n_prefix = int(np.argmin(fits)) if not fits.all() else len(rest)
    chosen[rest[:n_prefix]] = True
    room -= int(sizes[rest[:n_prefix]].sum())
    for patient in rest[n_prefix:]:  # the tail: skip patients too big for the room left
        if room == 0:
            break
        if sizes[patient] <= room:
            chosen[patient] = True
            room -= int(sizes[patient])


def label_counts(df: pd.DataFrame, targets: str | Sequence[str]) -> pd.DataFrame:
    """Per target: positive `images`, `patients` with any positive image, image `prevalence`."""
    targets = parse_targets(targets)
    y = findings_matrix(df, targets).astype(bool)  # (N, K)
    per_patient = pd.DataFrame(y, columns=targets).groupby(df[PATIENT_ID].to_numpy()).any()
    return pd.DataFrame(
        {
            "images": y.sum(axis=0),
            "patients": per_patient.sum(axis=0).to_numpy(),
            "prevalence": y.mean(axis=0) if len(df) else np.zeros(len(targets)),
        },
        index=pd.Index(targets, name="target"),
    )


def cooccurrence(df: pd.DataFrame, targets: str | Sequence[str]) -> pd.DataFrame:
    """K x K counts of images positive for both targets (the diagonal: for that target)."""
    targets = parse_targets(targets)
    y = findings_matrix(df, targets).astype(np.int64)  # (N, K)
    return pd.DataFrame(y.T @ y, index=targets, columns=targets)


def _show(views) -> str:
    return "None" if views is None else "{" + ", ".join(sorted(map(str, views))) + "}"
