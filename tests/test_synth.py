"""Tests of the synthetic NIH-layout data set (cxrlab.synth)."""

from __future__ import annotations

import ast
import csv
import hashlib
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlab.errors import ConfigError
from cxrlab.labels import FINDINGS, NO_FINDING, normalize_bbox_label, parse_finding_labels
from cxrlab.synth import (
    NIH_FRAME,
    render_chest,
    sample_anatomy,
    sample_shot,
    sample_sign,
    sign_names,
    write_synthetic_dataset,
)

SIGNS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumothorax",
)
HIGH = {name: 0.35 for name in SIGNS}  # so a small set holds every sign


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _labels(entry: pd.DataFrame) -> pd.Series:
    return entry["Finding Labels"].map(lambda text: set(parse_finding_labels(text)))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "nih"
    write_synthetic_dataset(root, patients=40, seed=3, image_size=64, prevalence=HIGH)
    return root


def test_data_layer_never_imports_the_generator():
    """The real data path must not depend on the demo generator (docs/ARCHITECTURE.md)."""
    import cxrlab.data

    offenders = []
    for path in sorted(Path(cxrlab.data.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("cxrlab.synth")]
    assert not offenders


def test_sign_names_are_the_drawn_findings_in_nih_order():
    assert sign_names() == SIGNS
    assert all(name in FINDINGS for name in sign_names())


def test_same_seed_gives_same_bytes_and_workers_do_not_matter(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", patients=5, seed=11, image_size=48)
    write_synthetic_dataset(tmp_path / "b", patients=5, seed=11, image_size=48, workers=2)
    write_synthetic_dataset(tmp_path / "c", patients=5, seed=12, image_size=48)
    da, db, dc = (_digest(tmp_path / n) for n in "abc")
    assert len(da) == a.images + 5  # images + 4 tables/lists + README
    assert da == db
    assert da != dc
    shared = set(da) & set(dc)
    assert shared and all(da[name] != dc[name] for name in shared if name.endswith(".png"))


#: Bytes of `write_synthetic_dataset(root, patients=20, seed=0, image_size=64)`, recorded on the
#: generator before it moved from cxrlab.data to cxrlab.synth (README.txt's then differed only
#: in naming the module). They hold for these library versions: numpy's random streams, scipy's
#: filters and zlib's compressor all shape the bytes.
GOLDEN_VERSIONS = {"numpy": "2.4.6", "scipy": "1.17.1", "Pillow": "13.0.0", "zlib": "1.2.13"}
GOLDEN_FILES = {
    "BBox_List_2017.csv": "0d0fcad477efed39466629d4b5c8f3d5c4af416731d7f93e0f681e0f6142eb65",
    "Data_Entry_2017.csv": "40d78826ec20113d94a03fe2d1ad8b0fde9e5f5e5231574810c0012b66e8e66b",
    "README.txt": "c2d62f90660df9e6397a85413c5493727f7826f5d864192b5cf0dc105acf45f0",
    "test_list.txt": "f23919bba835303de99169f50e773c6c9ff941adcc074b181cc03f04bd20f02b",
    "train_val_list.txt": "b2ba471757ccc295ae05072625581ac5e72fb7df731d5966e78164a8290a7cda",
}
GOLDEN_PNGS = (42, "b0390bc33aa5d6e3e85d485cd36109598521c2ae3f6715d4a6441eb314114a24")


def _library_versions() -> dict[str, str]:
    import PIL
    import scipy
    from PIL import features

    return {
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "Pillow": PIL.__version__,
        "zlib": features.version("zlib") or "none",
    }


def test_bytes_match_the_recorded_generator(tmp_path):
    versions = _library_versions()
    if versions != GOLDEN_VERSIONS:
        pytest.skip(f"hashes were recorded with {GOLDEN_VERSIONS}, these are {versions}")
    write_synthetic_dataset(tmp_path, patients=20, seed=0, image_size=64)
    digest = _digest(tmp_path)
    pngs = {name: h for name, h in digest.items() if name.endswith(".png")}
    assert {name: h for name, h in digest.items() if name not in pngs} == GOLDEN_FILES
    listing = "".join(f"{name} {h}\n" for name, h in sorted(pngs.items()))
    assert (len(pngs), hashlib.sha256(listing.encode()).hexdigest()) == GOLDEN_PNGS


def test_data_entry_has_the_2020_format(small):
    lines = (small / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    rows = list(csv.reader(lines[1:]))
    assert rows and all(len(row) == 11 for row in rows)
    entry = pd.read_csv(small / "Data_Entry_2017.csv")
    assert list(entry.columns[:7]) == [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
        "Patient Gender", "View Position",
    ]  # fmt: skip
    assert set(entry["View Position"]) == {"PA", "AP"}
    assert set(entry["Patient Gender"]) == {"M", "F"}
    assert entry["Patient Age"].between(1, 95).all()
    assert entry["Image Index"].is_monotonic_increasing
    for pid, group in entry.groupby("Patient ID"):
        assert group["Follow-up #"].tolist() == list(range(len(group)))
        assert group["Image Index"].tolist() == [
            f"{pid:08d}_{k:03d}.png" for k in range(len(group))
        ]
        assert group["Patient Gender"].nunique() == 1


def test_every_listed_image_exists_as_grey_png_without_metadata(small):
    entry = pd.read_csv(small / "Data_Entry_2017.csv")
    assert sorted(p.name for p in (small / "images").iterdir()) == entry["Image Index"].tolist()
    image = Image.open(small / "images" / entry["Image Index"].iloc[0])
    assert (image.mode, image.size) == ("L", (64, 64))
    data, chunks, at = (small / "images" / entry["Image Index"].iloc[0]).read_bytes(), [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append(kind)
        at += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}


def test_labels_use_the_vocabulary_and_no_finding_alone(small):
    entry = pd.read_csv(small / "Data_Entry_2017.csv")
    labels = _labels(entry)  # parse_finding_labels raises on unknown names or mixed No Finding
    assert set().union(*labels) == set(SIGNS)
    assert (entry["Finding Labels"] == NO_FINDING).sum() == sum(not s for s in labels)
    joined = entry["Finding Labels"][labels.map(len) > 1]
    assert all(t.split("|") == sorted(t.split("|")) for t in joined)


def test_split_lists_partition_images_by_patient(small):
    entry = pd.read_csv(small / "Data_Entry_2017.csv")
    train = (small / "train_val_list.txt").read_text().split("\n")
    test = (small / "test_list.txt").read_text().split("\n")
    assert train[-1] == "" and test[-1] == ""  # one name a line, newline-terminated
    train, test = set(train[:-1]), set(test[:-1])
    assert not train & test and train | test == set(entry["Image Index"])
    patient = dict(zip(entry["Image Index"], entry["Patient ID"], strict=True))
    assert not {patient[n] for n in train} & {patient[n] for n in test}
    assert len({patient[n] for n in test}) == 8  # round(0.2 * 40) patients


def test_bbox_list_has_official_header_frame_and_spelling(small):
    lines = (small / "BBox_List_2017.csv").read_text().splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    boxes = pd.read_csv(small / "BBox_List_2017.csv")
    assert boxes.shape[1] == 9 and len(boxes) > 0
    names = boxes.iloc[:, 1]
    assert "Infiltrate" in set(names) and "Infiltration" not in set(names)
    x, y, w, h = (boxes.iloc[:, k].to_numpy() for k in range(2, 6))
    assert (x >= 0).all() and (y >= 0).all() and (w > 0).all() and (h > 0).all()
    assert (x + w <= NIH_FRAME + 1e-3).all() and (y + h <= NIH_FRAME + 1e-3).all()
    assert (x + w).max() > 64  # the 1024 frame, not the 64-px images
    entry = pd.read_csv(small / "Data_Entry_2017.csv").set_index("Image Index")
    labels = _labels(entry.reset_index()).set_axis(entry.index)
    for index, name in zip(boxes.iloc[:, 0], names, strict=True):
        assert normalize_bbox_label(name) in labels[index]
    boxed = {(i, normalize_bbox_label(n)) for i, n in zip(boxes.iloc[:, 0], names, strict=True)}
    assert all((i, f) in boxed for i, found in labels.items() for f in found)  # all boxed


def test_bbox_fraction_limits_boxes_without_changing_images(tmp_path):
    full = write_synthetic_dataset(
        tmp_path / "a", patients=6, seed=5, image_size=48, prevalence=HIGH
    )
    none = write_synthetic_dataset(
        tmp_path / "b", patients=6, seed=5, image_size=48, prevalence=HIGH, bbox_fraction=0.0
    )
    assert full.boxes > 0 and none.boxes == 0
    assert len(pd.read_csv(tmp_path / "b" / "BBox_List_2017.csv")) == 0
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert {k: v for k, v in da.items() if k.startswith("images")} == {
        k: v for k, v in db.items() if k.startswith("images")
    }
    assert da["Data_Entry_2017.csv"] == db["Data_Entry_2017.csv"]


def _pair(finding: str, seed: int, size: int = 128):
    """The same film drawn with and without one sign: (with, without, box slices, sign, anatomy)."""
    rng = np.random.default_rng(seed)
    anatomy, shot = sample_anatomy(rng), sample_shot(rng, "PA")
    sign = sample_sign(finding, rng)
    with_sign, boxes = render_chest(anatomy, shot, [sign], size)
    without, none = render_chest(anatomy, shot, [], size)
    assert none == [] and [b.finding for b in boxes] == [finding]
    b = boxes[0]
    cols = slice(int(b.x0 * size), int(np.ceil(b.x1 * size)))
    rows = slice(int(b.y0 * size), int(np.ceil(b.y1 * size)))
    return with_sign.astype(float), without.astype(float), (rows, cols), sign, anatomy


@pytest.mark.parametrize(
    ("finding", "margin"),
    [("Effusion", 15), ("Atelectasis", 10), ("Infiltration", 8), ("Mass", 20), ("Nodule", 10),
     ("Pneumothorax", -3)],
)  # fmt: skip
def test_sign_changes_its_box_clearly_and_little_else(finding, margin):
    """Mean grey in the box moves by `margin` levels (negative: darker) vs the sign-free film."""
    for seed in range(4):
        img, ref, box, sign, _ = _pair(finding, seed)
        change = img[box].mean() - ref[box].mean()
        assert change > margin if margin > 0 else change < margin, (finding, seed, change)
        moved = np.abs(img - ref) > 12
        allowed = np.zeros_like(moved)
        allowed[box] = True
        if finding == "Atelectasis":  # volume loss also lifts that side's hemidiaphragm
            half = slice(64, None) if sign.side > 0 else slice(0, 64)
            allowed[box[0].start :, half] = True
        assert moved.any() and (moved & allowed).sum() >= 0.9 * moved.sum(), (finding, seed)


def test_cardiomegaly_heart_is_wider_and_on_the_image_right():
    for seed in range(4):
        img, ref, box, _, anatomy = _pair("Cardiomegaly", seed)
        assert img[box].mean() - ref[box].mean() > 8  # heart now covers lung in the box
        rows, cols = box
        ctr = (cols.stop - cols.start) / 128 / (2 * anatomy.lung_outer)
        assert ctr > 0.5  # within the positioning jitter's 3% magnification
        assert (cols.start + cols.stop) / 2 / 128 > anatomy.midline  # heart leans image-right
        assert anatomy.ctr < 0.5


def test_ap_film_magnifies_the_heart():
    rng = np.random.default_rng(0)
    anatomy = sample_anatomy(rng)
    sign = sample_sign("Cardiomegaly", rng)
    shot_pa = sample_shot(np.random.default_rng(1), "PA")
    shot_ap = sample_shot(np.random.default_rng(1), "AP")
    (_, [pa]), (_, [ap]) = (render_chest(anatomy, s, [sign], 64) for s in (shot_pa, shot_ap))
    assert (ap.x1 - ap.x0) / shot_ap.scale > 1.05 * (pa.x1 - pa.x0) / shot_pa.scale


def test_images_of_one_patient_look_more_alike_than_of_two(tmp_path):
    root = tmp_path / "healthy"
    write_synthetic_dataset(root, patients=16, image_size=64, prevalence=dict.fromkeys(SIGNS, 0))
    clean = pd.read_csv(root / "Data_Entry_2017.csv")
    assert (clean["Finding Labels"] == NO_FINDING).all()
    pixels = {
        n: np.asarray(Image.open(root / "images" / n), float).ravel() for n in clean["Image Index"]
    }
    groups = [g["Image Index"].tolist() for _, g in clean.groupby("Patient ID") if len(g) > 1]
    firsts = [g["Image Index"].iloc[0] for _, g in clean.groupby("Patient ID")]
    assert len(groups) >= 3

    def corr(a: str, b: str) -> float:
        return float(np.corrcoef(pixels[a], pixels[b])[0, 1])

    within = np.mean([corr(g[0], g[1]) for g in groups])
    between = np.mean([corr(a, b) for a, b in zip(firsts[:-1], firsts[1:], strict=True)])
    assert within > between + 0.02, (within, between)


def test_labels_follow_prevalence_and_co_occur_as_in_nih(tmp_path):
    info = write_synthetic_dataset(tmp_path / "p", patients=300, seed=0, image_size=32)
    entry = pd.read_csv(tmp_path / "p" / "Data_Entry_2017.csv")
    y = {f: _labels(entry).map(lambda s, f=f: f in s).to_numpy(float) for f in SIGNS}
    targets = {"Atelectasis": .15, "Cardiomegaly": .12, "Effusion": .18, "Infiltration": .22,
               "Pneumothorax": .12}  # fmt: skip
    for name, target in targets.items():
        assert abs(y[name].mean() - target) < 0.06, (name, y[name].mean())
    assert 0.3 < info.label_counts[NO_FINDING] / info.images < 0.65
    for other in ("Atelectasis", "Infiltration", "Cardiomegaly"):
        assert np.corrcoef(y["Effusion"], y[other])[0, 1] > 0.05, other
    # follow-ups share findings more than chance: P(next has f | this has f) > P(f)
    same = entry["Patient ID"].to_numpy()[1:] == entry["Patient ID"].to_numpy()[:-1]
    for name in ("Effusion", "Infiltration", "Cardiomegaly"):
        this, nxt = y[name][:-1][same], y[name][1:][same]
        assert nxt[this == 1].mean() > 1.5 * y[name].mean(), name


def test_zero_prevalence_disables_a_finding(tmp_path):
    write_synthetic_dataset(tmp_path / "z", patients=20, image_size=32, prevalence={"Effusion": 0})
    entry = pd.read_csv(tmp_path / "z" / "Data_Entry_2017.csv")
    assert not entry["Finding Labels"].str.contains("Effusion").any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prevalence": {"Pneumonia": 0.1}}, "Pneumonia"),
        ({"prevalence": {"Effusion": 1.5}}, "Effusion=1.5"),
        ({"image_size": 16}, "image_size=16"),
        ({"patients": 0}, "patients=0"),
        ({"bbox_fraction": 2.0}, "bbox_fraction=2.0"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
    ],
)
def test_bad_options_raise_config_error_naming_the_value(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        write_synthetic_dataset(tmp_path / "x", **kwargs)


def test_refuses_non_empty_directory_unless_overwrite(tmp_path):
    root = tmp_path / "o"
    write_synthetic_dataset(root, patients=3, image_size=32, seed=1)
    stale = root / "images" / "09999999_000.png"
    stale.write_bytes(b"old")
    with pytest.raises(ConfigError, match="not empty"):
        write_synthetic_dataset(root, patients=3, image_size=32)
    info = write_synthetic_dataset(root, patients=3, image_size=32, seed=1, overwrite=True)
    assert not stale.exists() and len(list((root / "images").iterdir())) == info.images
    readme = (root / "README.txt").read_text()
    assert readme.startswith("SYNTHETIC")  # report/card.py tells synthetic data by this word
    assert "seed=1" in readme and "1024" in readme


@pytest.mark.slow
def test_effusion_and_cardiomegaly_are_learnable_by_a_linear_model(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    write_synthetic_dataset(tmp_path / "l", patients=260, seed=7, image_size=64)
    root = tmp_path / "l"
    entry = pd.read_csv(root / "Data_Entry_2017.csv")
    x = np.stack([
        np.asarray(Image.open(root / "images" / n).resize((32, 32), Image.BOX), float).ravel()
        for n in entry["Image Index"]
    ])  # fmt: skip
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    test = entry["Image Index"].isin(set((root / "test_list.txt").read_text().split()))
    test = test.to_numpy()
    labels = _labels(entry)
    for name in ("Effusion", "Cardiomegaly"):
        y = labels.map(lambda s, n=name: n in s).to_numpy()
        model = LogisticRegression(C=0.01, max_iter=2000).fit(x[~test], y[~test])
        auc = roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])
        assert auc > 0.8, (name, auc)
