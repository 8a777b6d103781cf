"""Synthetic chest X-rays in the exact NIH ChestX-ray14 layout (`cxrlab synth`).

Every cxrlab stage runs on the result exactly as on the real data, and nothing is downloaded:
`images/<Image Index>.png` (8-bit grey, `%08d_%03d.png` = patient, follow-up),
`Data_Entry_2017.csv` (2020 revision's 11-field format), `train_val_list.txt`/`test_list.txt`
(split by patient), `BBox_List_2017.csv` (official odd header; boxes in the 1024x1024 NIH PNG
frame whatever `image_size` is, as in the real file: `x * image_size / 1024` gives pixels) and
`README.txt`.

The generator is this project's own idea, so it is written by hand. A patient is an `Anatomy`
(body, lungs, heart, ribs, exposure habits) drawn once; each of the patient's images is a `Shot`
(view, positioning and exposure jitter) plus the `Sign`s of its findings. A latent model makes
labels co-occur as in NIH: a patient "sickness" factor loads on every finding, a "fluid" factor
links Effusion with Atelectasis, Infiltration and Cardiomegaly, and a per-patient persistence
term makes follow-ups share findings. Labels are truth: a finding is written iff its sign is
drawn. Coordinates are image fractions (0..1, origin top-left); `side` is -1 for the patient's
right (image left) and +1 for the patient's left (image right), as on a PA film.

Bytes are reproducible for a given seed and library versions (numpy, zlib): each patient draws
from its own `SeedSequence` child, so results do not depend on `workers`, and PNGs carry no
metadata chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from cxrlab.errors import ConfigError, DataError
from cxrlab.labels import NO_FINDING
from cxrlab.synth.nih_files import (
    BBOX_FILE,
    DATA_ENTRY_FILE,
    README_FILE,
    SYNTH_FILES,
    Row,
    write_bbox_list,
    write_data_entry,
    write_png,
    write_split_lists,
    write_text,
)
from cxrlab.synth.parameters import Sign, sample_anatomy, sample_shot
from cxrlab.synth.render import render_chest
from cxrlab.synth.signs import sample_sign, sign_names

logger = logging.getLogger(__name__)


#: finding -> (default prevalence, loading on the shared "fluid" factor, persistence loading).
#: Prevalences are raised above NIH's (Infiltration .18, Effusion .12, Atelectasis .10,
#: Pneumothorax .05, Cardiomegaly .025, Mass .05, Nodule .06) so a few hundred images are
#: learnable. Every finding also loads 0.35 on the patient's sickness; the rest is image noise.
SIGN_MODEL: dict[str, tuple[float, float, float]] = {
    "Atelectasis": (0.15, 0.40, 0.55),
    "Cardiomegaly": (0.12, 0.40, 0.70),  # chronic: follow-ups mostly agree
    "Effusion": (0.18, 0.55, 0.55),
    "Infiltration": (0.22, 0.35, 0.50),
    "Mass": (0.05, 0.0, 0.70),
    "Nodule": (0.05, 0.0, 0.70),
    "Pneumothorax": (0.12, 0.0, 0.45),
}
_SICKNESS_LOADING = 0.35
_FLUID_PATIENT_SHARE = 0.6  # the fluid factor is 60% patient-level, 40% image-level

#: (width, height, pixel spacing mm) of common NIH originals, for the metadata columns.
_ORIGINAL_FORMATS = (
    (2500, 2048, 0.168),
    (2048, 2500, 0.168),
    (2992, 2991, 0.143),
    (3056, 2544, 0.139),
    (2682, 2749, 0.143),
    (2021, 2021, 0.194),
)


@dataclass(frozen=True)
class SynthInfo:
    """What `write_synthetic_dataset` wrote."""

    root: Path
    seed: int
    image_size: int
    patients: int
    images: int
    boxes: int
    label_counts: dict[str, int]  # images per finding (only findings with a sign) and No Finding
    train_val_images: int
    test_images: int


@dataclass(frozen=True)
class _Options:
    """Resolved options, shipped to worker processes."""

    images_dir: Path
    size: int
    rates: tuple[float, ...]  # per SIGN_MODEL finding: target prevalence
    thresholds: tuple[float, ...]  # per SIGN_MODEL finding: liability cut (inf = never)
    bbox_fraction: float
    max_images: int


def _findings(rng: np.random.Generator, patient_factors: np.ndarray, thresholds) -> list[str]:
    """One image's findings from the latent model (all draws happen whatever the thresholds)."""
    sick, fluid_p, persist = patient_factors[0], patient_factors[1], patient_factors[2:]
    fluid = (
        np.sqrt(_FLUID_PATIENT_SHARE) * fluid_p + np.sqrt(1 - _FLUID_PATIENT_SHARE) * rng.normal()
    )
    eps = rng.standard_normal(len(SIGN_MODEL))
    found = []
    for k, (name, (_, w_fluid, w_persist)) in enumerate(SIGN_MODEL.items()):
        w_eps = np.sqrt(1 - _SICKNESS_LOADING**2 - w_fluid**2 - w_persist**2)
        liability = (
            _SICKNESS_LOADING * sick + w_fluid * fluid + w_persist * persist[k] + w_eps * eps[k]
        )
        if liability > thresholds[k]:
            found.append(name)
    return found


def _signs(rng: np.random.Generator, findings: list[str]) -> list[Sign]:
    """Signs for the image's findings; Effusion is bilateral one time in three."""
    drawn = {name: sample_sign(name, rng) for name in SIGN_MODEL}  # fixed number of draws
    other_side = sample_sign("Effusion", rng, side=-drawn["Effusion"].side)
    bilateral = rng.random() < 1 / 3
    signs = [drawn[name] for name in findings]
    if "Effusion" in findings and bilateral:
        signs.append(other_side)
    return signs


def _make_image(rng, anatomy, factors, pid: int, k: int, age: int, opts: _Options) -> Row:
    """Draw, render and write image `k` of patient `pid`; return its Data_Entry row."""
    ap_rate = np.clip(0.35 + 0.12 * factors[0], 0.1, 0.8)  # sicker patients: bedside AP films
    view = "AP" if rng.random() < ap_rate else "PA"
    shot = sample_shot(rng, view)
    signs = _signs(rng, _findings(rng, factors, opts.thresholds))
    original = _ORIGINAL_FORMATS[int(rng.integers(len(_ORIGINAL_FORMATS)))]
    keep_boxes = rng.random() < opts.bbox_fraction
    image, boxes = render_chest(anatomy, shot, signs, opts.size)
    index = f"{pid:08d}_{k:03d}.png"
    write_png(opts.images_dir / index, image)
    return Row(
        index=index,
        labels=tuple(sorted({b.finding for b in boxes})),  # labels = what was visibly drawn
        follow_up=k,
        patient=pid,
        age=age,
        sex="F" if anatomy.female else "M",
        view=view,
        original=original,
        boxes=tuple(boxes) if keep_boxes else (),
    )


def _make_patient(pid: int, seq: np.random.SeedSequence, opts: _Options) -> list[Row]:
    """All images of one patient, from the patient's own seed (so workers cannot matter)."""
    rng = np.random.default_rng(seq)
    female = bool(rng.random() < 0.44)
    age0, years_per_visit = int(np.clip(np.rint(rng.normal(47, 16)), 2, 92)), rng.uniform(0, 0.6)
    anatomy = sample_anatomy(rng, female=female)
    n_images = int(min(rng.geometric(0.4), opts.max_images))  # mean ~2.5 as a few-visit NIH
    factors = rng.standard_normal(2 + len(SIGN_MODEL))  # sickness, fluid, persistence per finding
    return [
        _make_image(rng, anatomy, factors, pid, k, min(95, age0 + int(k * years_per_visit)), opts)
        for k in range(n_images)
    ]


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    patients: int = 300,
    seed: int = 0,
    image_size: int = 256,
    prevalence: Mapping[str, float] | None = None,
    test_fraction: float = 0.2,
    bbox_fraction: float = 1.0,
    max_images_per_patient: int = 8,
    workers: int = 1,
    overwrite: bool = False,
) -> SynthInfo:
    """Write a synthetic data set in the NIH ChestX-ray14 layout to `out_dir`.

    `prevalence` overrides `SIGN_MODEL`'s default per-finding prevalence (0 disables one);
    the observed rates are a little lower, since a sign hidden by another is not labelled.
    `test_fraction` of the patients go to `test_list.txt`; `bbox_fraction` of the images with
    signs get their boxes written. The same arguments give the same bytes, whatever `workers`.
    """
    opts = _resolve(
        Path(out_dir),
        patients,
        image_size,
        prevalence,
        test_fraction,
        bbox_fraction,
        max_images_per_patient,
        workers,
    )
    root = Path(out_dir)
    _prepare_out_dir(root, overwrite)
    split_seq, *patient_seqs = np.random.SeedSequence(seed).spawn(patients + 1)
    ids = list(range(1, patients + 1))
    logger.info("drawing %d synthetic patients at %d px into %s", patients, image_size, root)
    rows = _draw_rows(ids, patient_seqs, opts, workers)
    order = np.random.default_rng(split_seq).permutation(ids)
    test_patients = set(order[: int(round(test_fraction * patients))].tolist())
    write_data_entry(root / DATA_ENTRY_FILE, rows)
    write_bbox_list(root / BBOX_FILE, rows)
    n_test = write_split_lists(root, rows, test_patients)
    info = SynthInfo(
        root,
        seed,
        image_size,
        patients,
        len(rows),
        sum(len(r.boxes) for r in rows),
        _label_counts(rows),
        len(rows) - n_test,
        n_test,
    )
    _write_readme(root / README_FILE, info, opts, test_fraction, max_images_per_patient)
    logger.info("wrote %d images, %d boxes", info.images, info.boxes)
    return info


def _draw_rows(
    ids: list[int], seqs: list[np.random.SeedSequence], opts: _Options, workers: int
) -> list[Row]:
    """Every patient's images in patient order, drawn in `workers` processes (same result)."""
    if workers == 1:
        return [
            row for pid, seq in zip(ids, seqs, strict=True) for row in _make_patient(pid, seq, opts)
        ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunks = pool.map(
            _make_patient,
            ids,
            seqs,
            [opts] * len(ids),
            chunksize=max(1, len(ids) // (4 * workers)),
        )
        return [row for chunk in chunks for row in chunk]


def _resolve(
    out: Path, patients, image_size, prevalence, test_fraction, bbox_fraction, max_images, workers
) -> _Options:
    """Check the options (naming what is wrong and what is valid) and resolve thresholds."""
    checks = (
        (patients >= 1, f"patients={patients} should be >= 1"),
        (32 <= image_size <= 2048, f"image_size={image_size} should be within 32..2048"),
        (0 <= test_fraction < 1, f"test_fraction={test_fraction} should be in [0, 1)"),
        (0 <= bbox_fraction <= 1, f"bbox_fraction={bbox_fraction} should be in [0, 1]"),
        (1 <= max_images <= 999, f"max_images_per_patient={max_images} should be in 1..999"),
        (workers >= 1, f"workers={workers} should be >= 1"),
        (patients <= 99_999_999, f"patients={patients} does not fit the 8-digit Patient ID"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    rates = {name: model[0] for name, model in SIGN_MODEL.items()}
    for name, rate in (prevalence or {}).items():
        if name not in SIGN_MODEL:
            raise ConfigError(
                f"prevalence given for {name!r}, which has no drawn sign; "
                f"valid: {', '.join(sign_names())}"
            )
        if not 0 <= rate < 1:
            raise ConfigError(f"prevalence of {name}={rate} should be in [0, 1)")
        rates[name] = float(rate)
    thresholds = tuple(
        NormalDist().inv_cdf(1 - r) if r > 0 else float("inf") for r in rates.values()
    )
    return _Options(
        out / "images", image_size, tuple(rates.values()), thresholds, bbox_fraction, max_images
    )


def _prepare_out_dir(root: Path, overwrite: bool) -> None:
    """Create `root/images`; refuse a non-empty `root` unless `overwrite` (then clear our files)."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"output directory {root} is not empty; choose an empty or new "
                "directory, or pass overwrite=True (--overwrite)"
            )
        for name in SYNTH_FILES:
            (root / name).unlink(missing_ok=True)
        for png in (root / "images").glob("[0-9]*_[0-9]*.png"):
            png.unlink()
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {root / 'images'}: {exc}") from exc


def _label_counts(rows: Sequence[Row]) -> dict[str, int]:
    counts = {name: sum(name in r.labels for r in rows) for name in sign_names()}
    counts[NO_FINDING] = sum(not r.labels for r in rows)
    return counts


def _write_readme(path: Path, info: SynthInfo, opts: _Options, test_fraction, max_images) -> None:
    import PIL

    counts = ", ".join(f"{name} {n}" for name, n in info.label_counts.items())
    rates = ", ".join(f"{name} {r:g}" for name, r in zip(SIGN_MODEL, opts.rates, strict=True))
    write_text(
        path,
        f"""\
SYNTHETIC chest X-rays in the NIH ChestX-ray14 layout. No patient data: every image was drawn
by cxrlab.synth (cxrlab synth); the labels are exactly the signs drawn.

seed={info.seed} patients={info.patients} image_size={info.image_size}
test_fraction={test_fraction} bbox_fraction={opts.bbox_fraction} max_images_per_patient={max_images}
target prevalence (latent model): {rates}
images={info.images} (train_val {info.train_val_images}, test {info.test_images}) boxes={info.boxes}
label counts: {counts}
made with numpy {np.__version__}, Pillow {PIL.__version__}

images/<Image Index>.png  8-bit grey, {info.image_size}x{info.image_size}; names %08d_%03d.png
Data_Entry_2017.csv       2020 revision format (11 fields a row); `|`-joined labels
train_val_list.txt, test_list.txt  split by patient
BBox_List_2017.csv        one box per drawn sign, official header and spelling (Infiltrate);
                          x, y, w, h in the 1024x1024 NIH PNG frame like the real file:
                          multiply by {info.image_size}/1024 for pixels of these images.
Signs drawn: {", ".join(sign_names())}. The same seed and library versions give the same bytes.
""",
    )
