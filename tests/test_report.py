"""`cxrlab report`: the HTML report from a structurally faithful run directory.

The fixture run is written with the real producers where they are cheap and torch-free
(`split_summary`, `compute_metrics`, `bootstrap_ci`, `calibration_report`, `subgroup_auroc_of`,
`choose_thresholds`, `compare_models`, `run_analysis`); only the matplotlib figures and the
plotly page are replaced by tiny stand-ins, and the Grad-CAM index is written by hand.
Predictions are built so the answers are known: simple_cnn separates Atelectasis perfectly
and guesses Effusion, resnet18 the other way round, and both give identical Pneumothorax
probabilities (a tie).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlab.errors import DataError
from cxrlab.report import summary as verdicts
from cxrlab.report.build import build_report, markdown_html
from cxrlab.report.collect import collect_cohort, collect_run

TARGETS = ["Atelectasis", "Effusion", "Pneumothorax"]
MODELS = ("resnet18", "simple_cnn")
SECTION_IDS = ("summary", "cohort", "training", "metrics", "comparison", "analysis", "explain")


# ---- the fixture run ---------------------------------------------------------------------


def _png(path: Path, color=(40, 90, 160), size=(48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _cohort(rng: np.random.Generator, n_patients: int = 100) -> pd.DataFrame:
    rows = []
    for pid in range(n_patients):
        split = "train" if pid < 40 else "val" if pid < 60 else "test"
        for visit in range(2):
            rows.append(
                {
                    "Image Index": f"{pid + 1:08d}_{visit:03d}.png",
                    "Patient ID": f"{pid + 1:08d}",
                    "split": split,
                }
            )
    frame = pd.DataFrame(rows)
    y = (rng.random((len(frame), len(TARGETS))) < 0.3).astype(np.uint8)
    y[0::7] = 1  # every split has positives and negatives of every target
    y[1::7] = 0
    for k, name in enumerate(TARGETS):
        frame[name] = y[:, k]
    frame["Finding Labels"] = [
        "|".join(t for t, v in zip(TARGETS, row, strict=True) if v) or "No Finding" for row in y
    ]
    frame["age"] = rng.integers(20, 90, len(frame))
    frame["sex"] = rng.choice(["M", "F"], len(frame))
    frame["view"] = rng.choice(["PA", "AP"], len(frame))
    frame["follow_up"] = np.tile([0, 1], len(frame) // 2)
    return frame


def write_data(run_dir: Path, rng: np.random.Generator) -> pd.DataFrame:
    from cxrlab.config import DataConfig
    from cxrlab.data.split import split_summary
    from cxrlab.runinfo import package_versions, write_json

    cohort = _cohort(rng)
    data = run_dir / "data"
    data.mkdir(parents=True)
    cohort.to_csv(data / "cohort.csv", index=False)
    summary = split_summary(cohort, TARGETS)
    summary.update(split="patient", seed=0)
    write_json(data / "split_summary.json", summary)
    options = DataConfig(data_root="/data/nih", pathologies=TARGETS, image_size=64)
    write_json(
        data / "prepare.json",
        {
            "options": options.model_dump(mode="json"),
            "data_root": "/data/nih",
            "versions": package_versions(),
        },
    )
    boxes = pd.DataFrame(
        {
            "Image Index": cohort["Image Index"].iloc[[160, 162]],
            "label": ["Effusion", "Atelectasis"],
            "x": 100.0,
            "y": 100.0,
            "w": 200.0,
            "h": 200.0,
            "x0": 0.1,
            "y0": 0.1,
            "x1": 0.3,
            "y1": 0.3,
        }
    )
    boxes.to_csv(data / "boxes.csv", index=False)
    return cohort


def _probs(y: np.ndarray, model: str, rng: np.random.Generator) -> np.ndarray:
    """(N, 3): the model's 'own' class perfectly separated, the other guessed, a shared tie."""
    own = TARGETS.index("Atelectasis" if model == "simple_cnn" else "Effusion")
    p = rng.random(y.shape)
    p[:, own] = 0.15 + 0.7 * y[:, own] + 0.1 * rng.random(len(y))
    tie = np.random.default_rng(99).random(len(y))  # same for both models
    p[:, 2] = np.clip(0.35 * y[:, 2] + 0.6 * tie, 0, 1)
    return p


def write_model(run_dir: Path, name: str, cohort: pd.DataFrame, rng) -> None:
    from cxrlab.config import ExperimentConfig, to_yaml
    from cxrlab.evaluate.bootstrap import bootstrap_ci
    from cxrlab.evaluate.calibration import calibration_report
    from cxrlab.evaluate.metrics import compute_metrics, read_predictions
    from cxrlab.evaluate.subgroups import subgroup_auroc_of
    from cxrlab.evaluate.thresholds import choose_thresholds, save_thresholds
    from cxrlab.runinfo import write_json

    mdir = run_dir / "models" / name
    mdir.mkdir(parents=True)
    config = ExperimentConfig.model_validate({"model": {"name": name}, "train": {"epochs": 4}})
    (mdir / "config.yaml").write_text(to_yaml(config))
    curve = pd.DataFrame(
        {
            "epoch": range(4),
            "train_loss": [0.7, 0.5, 0.4, 0.35],
            "val_loss": [0.6, 0.5, 0.45, 0.47],
            "val_auroc_macro": [0.6, 0.7, 0.8, 0.78],
            **{f"val_auroc_{t}": [0.6, 0.7, 0.8, 0.78] for t in TARGETS},
            "lr": [1e-3, 8e-4, 5e-4, 1e-4],
            "seconds": [3.2, 3.1, 3.0, 3.1],
        }
    )
    curve.to_csv(mdir / "metrics.csv", index=False)
    write_json(
        mdir / "run.json",
        {
            "seed": 0,
            "image_size": 64,
            "epochs_run": 4,
            "best_epoch": 2,
            "best_val_auroc_macro": 0.8,
            "stopped_early": False,
            "finished": "now",
            "trainer": {"precision": "32", "devices": "1"},
        },
    )
    preds = {}
    for split in ("val", "test"):
        part = cohort[cohort["split"] == split].reset_index(drop=True)
        p = _probs(part[TARGETS].to_numpy(), name, rng)
        frame = part[["Image Index", "Patient ID"]].copy()
        for k, t in enumerate(TARGETS):
            frame[f"p_{t}"], frame[f"y_{t}"] = p[:, k], part[t].to_numpy()
        frame[["age", "sex", "view"]] = part[["age", "sex", "view"]]
        out = run_dir / "reports" / name / split
        out.mkdir(parents=True)
        frame.to_csv(out / "predictions.csv", index=False)
        preds[split] = read_predictions(out / "predictions.csv")
    val, test = preds["val"], preds["test"]
    thresholds = choose_thresholds(val.y, val.p, TARGETS, "max_f1")
    save_thresholds(thresholds, mdir / "thresholds.json")
    options = {
        "split": "test",
        "threshold": "max_f1",
        "target_sensitivity": 0.9,
        "n_boot": 60,
        "seed": 0,
        "temperature": False,
        "batch_size": 64,
        "figures": True,
        "drop_missing": False,
        "age_edges": [40, 60, 80],
    }
    result = {  # the layout `cxrlab.evaluate.workflow.evaluate_predictions` writes
        "model": name,
        "predictions": "predictions.csv",
        "n_images": int(test.y.shape[0]),
        "n_patients": len(set(test.patient_ids)),
        "options": options,
        "thresholds": thresholds,
        "metrics": compute_metrics(test.y, test.p, thresholds, TARGETS),
        "metrics_at_0.5": compute_metrics(test.y, test.p, 0.5, TARGETS),
        "ci": bootstrap_ci(
            test.y, test.p, test.patient_ids, thresholds, TARGETS, n_boot=60, seed=0
        ),
        "calibration": calibration_report(test.y, test.p, TARGETS),
        "subgroups": subgroup_auroc_of(test, n_boot=20, seed=0),
        "temperature": None,
    }
    write_json(run_dir / "reports" / name / "test" / "metrics.json", result)
    for stem in ("roc", "pr", "confusion", "reliability", "training"):
        _png(run_dir / "reports" / name / "test" / "figures" / f"{stem}.png")


def _fake_plot(*args, **kwargs):
    out_dir = Path(args[3] if len(args) > 3 else kwargs.get("out_dir", args[-1]))
    return [_png(out_dir / "figure.png")]


def write_comparison(run_dir: Path) -> None:
    from cxrlab.evaluate import compare

    with pytest.MonkeyPatch.context() as mp:  # matplotlib is slow; the report only embeds PNGs
        for fn in ("plot_roc_curves", "plot_pr_curves", "plot_reliability"):
            mp.setattr(
                compare,
                fn,
                lambda y, probs, targets, out_dir, f=fn: [
                    _png(Path(out_dir) / f"{f.split('_')[1]}.png")
                ],
            )
        mp.setattr(
            compare,
            "plot_auroc_comparison",
            lambda cis, targets, out_dir: [_png(Path(out_dir) / "auroc_bars.png")],
        )
        compare.compare_models(run_dir, "test", n_boot=200, seed=0)


def write_analysis(run_dir: Path, cohort: pd.DataFrame, rng) -> None:
    from cxrlab.analysis import figures
    from cxrlab.analysis.summary import run_analysis

    test = cohort[cohort["split"] == "test"].reset_index(drop=True)
    features = rng.normal(size=(len(test), 12)) + 3 * test[["view"]].eq("AP").to_numpy()
    out = run_dir / "analysis" / "resnet18"
    stems = (
        "plot_explained_variance",
        "plot_pca_scatter",
        "plot_pca_3d",
        "plot_k_selection",
        "plot_enrichment_heatmap",
        "plot_confounds",
    )
    with pytest.MonkeyPatch.context() as mp:
        for fn in stems:
            mp.setattr(figures, fn, lambda *a, **k: [_png(Path(str(a[-1])).with_suffix(".png"))])
        mp.setattr(
            figures,
            "write_interactive_3d",
            lambda Z, hover, attrs, path, seed=0: (
                Path(path).write_text("<!DOCTYPE html><html><body><p>3-D PCA</p></body></html>")
                and path
            ),
        )
        run_analysis(features, test, TARGETS, out, k_range=(2, 4), n_components=5, n_splits=3)


NO_BOX_NOTE = "no Pneumothorax image of this split has a box: localization not scored"


def write_explain(run_dir: Path) -> None:
    """explain.json / localization.json in the layout `cxrlab.explain.workflow` writes."""
    groups = (
        ("true_positive", 0.93, True),
        ("false_positive", 0.81, None),
        ("false_negative", 0.07, False),
    )
    for name in MODELS:
        folder = run_dir / "reports" / name / "explain"
        entries = []
        for rank, (group, prob, hit) in enumerate(groups):
            png = _png(folder / "Effusion" / f"{group}_01_0000009{rank}_000.png", (200, 60, 40))
            entries.append(
                {
                    "image": f"0000009{rank}_000.png",
                    "pathology": "Effusion",
                    "group": group,
                    "probability": prob,
                    "label": int(group != "false_positive"),
                    "png": str(png.relative_to(run_dir)),
                    "n_boxes": int(hit is not None),
                    "hit": hit,
                    "iou": 0.41 if hit else (0.0 if hit is False else None),
                    "peak": {"x": 3, "y": 4},
                    "threshold": 0.5,
                }
            )
        head = {"model": name, "checkpoint": f"models/{name}/best.ckpt", "mode": "gallery"}
        (folder / "explain.json").write_text(json.dumps({**head, "entries": entries, "notes": []}))
        per = {
            "Effusion": {
                "n": 4,
                "n_boxes": 5,
                "hits": 3,
                "hit_rate": 0.75,
                "mean_iou": 0.31,
                "random_point_hit_rate": 0.12,
                "centre_point_hit_rate": 0.25,
                "centre_map_iou": 0.08,
            },
            "Pneumothorax": {
                "n": 0,
                "n_boxes": 0,
                "hits": 0,
                "hit_rate": None,
                "mean_iou": None,
                "random_point_hit_rate": None,
                "centre_point_hit_rate": None,
                "centre_map_iou": None,
                "note": NO_BOX_NOTE,
            },
        }
        definitions = {"hit_rate": "pointing game: share whose maximum lies in a box"}
        loc = {**head, "definitions": definitions, "per_pathology": per, "notes": []}
        (folder / "localization.json").write_text(json.dumps(loc))


def write_study(run_dir: Path) -> None:
    """study.yaml and stages.json as `cxrlab run` (cxrlab.pipeline) writes them."""
    from cxrlab.config import DataConfig, StudyConfig, to_yaml

    study = StudyConfig(data=DataConfig(data_root="/data/nih", pathologies=TARGETS))
    (run_dir / "study.yaml").write_text(to_yaml(study))
    stages = {
        "prepare": {
            "key": "ab12",
            "status": "done",
            "seconds": 1.234,
            "finished": "2026-01-01T10:00:00",
            "error": "",
        },
        "explain": {
            "key": "cd34",
            "status": "failed",
            "seconds": 0.5,
            "finished": "2026-01-01T10:05:00",
            "error": "StageError: boom",
        },
    }
    (run_dir / "stages.json").write_text(json.dumps(stages))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("report") / "run"
    rng = np.random.default_rng(0)
    cohort = write_data(run_dir, rng)
    for name in MODELS:
        write_model(run_dir, name, cohort, rng)
    write_comparison(run_dir)
    write_analysis(run_dir, cohort, rng)
    write_explain(run_dir)
    write_study(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def full_report(full_run) -> tuple[Path, str]:
    path = build_report(full_run)
    return path, path.read_text()


# ---- HTML helpers ------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, and the cell texts of one table by id."""

    def __init__(self, table_id: str | None = None) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.table_id, self.rows, self._in, self._cell = table_id, [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id") == self.table_id:
            self._in = True
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False
        elif self._in and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join(self._cell.split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(text: str, table_id: str | None = None) -> Tags:
    parser = Tags(table_id)
    parser.feed(text)
    return parser


def section(text: str, sid: str) -> str:
    match = re.search(rf'<section class="card" id="{sid}">(.*?)</section>', text, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


# ---- tests -------------------------------------------------------------------------------


def test_full_report_renders_every_section_and_embeds_every_figure(full_run, full_report):
    path, text = full_report
    assert path == full_run / "report.html"
    for sid in (*SECTION_IDS, "card"):
        assert "Not run." not in section(text, sid), sid
    imgs = [a["src"] for tag, a in parse(text).tags if tag == "img"]
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    # every PNG the stages wrote appears once: eval (4 + training) x 2 models, compare 4,
    # analysis 6, Grad-CAM 3 x 2 models
    assert len(imgs) == 2 * 5 + 4 + 6 + 2 * 3
    assert "data-broken-images" in text  # the self-check script is there


def test_report_is_offline_no_external_script_style_or_font(full_report):
    _, text = full_report
    for tag, attrs in parse(text).tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"^(https?:)?//", value), (tag, value)
        assert not (tag == "link" and attrs.get("rel") == "stylesheet")
        assert not (tag == "script" and "src" in attrs)
    assert "@import" not in text and "url(http" not in text


def test_summary_names_the_best_model_per_class_with_verdicts(full_run, full_report):
    from sklearn.metrics import roc_auc_score

    _, text = full_report
    rows = {r[0]: r for r in parse(text, "best-table").rows[1:]}
    assert (
        rows["Atelectasis"][1] == "simple_cnn" and "better than resnet18" in rows["Atelectasis"][7]
    )
    assert rows["Effusion"][1] == "resnet18" and "better than simple_cnn" in rows["Effusion"][7]
    # identical predictions: no difference shown, with what that rests on
    assert "no difference from simple_cnn shown" in rows["Pneumothorax"][7]
    assert "Holm-adjusted p = 1.000" in rows["Pneumothorax"][7]
    assert "DeLong p = 1.000, assumes independent images" in rows["Pneumothorax"][7]
    macro = {}
    for name in MODELS:
        frame = pd.read_csv(full_run / "reports" / name / "test" / "predictions.csv")
        aucs = [roc_auc_score(frame[f"y_{t}"], frame[f"p_{t}"]) for t in TARGETS]
        macro[name] = np.mean(aucs)
        if name == "resnet18":  # the estimate, then its CI on its own line
            assert re.fullmatch(
                rf"{aucs[2]:.3f}\[\d\.\d{{3}}, \d\.\d{{3}}\]", rows["Pneumothorax"][2]
            )
    assert rows["macro (mean over classes)"][1] == max(macro, key=macro.get)


def test_baseline_beside_all_negative_is_computed_on_the_same_images(full_run, full_report):
    _, text = full_report
    frame = pd.read_csv(full_run / "reports" / "resnet18" / "test" / "predictions.csv")
    y = frame[[f"y_{t}" for t in TARGETS]].to_numpy()
    hamming_all_negative = 1 - y.mean()
    exact_all_negative = (y.sum(axis=1) == 0).mean()
    callout = re.search(r'id="baseline">(.*?)</div>\s*</div>', text, re.S).group(1)
    # the uncited "published study" figures are gone (issue 10, finding 6)
    assert "88.8%" not in callout and "81.9%" not in callout
    assert f"{100 * hamming_all_negative:.1f}%" in callout
    assert f"{100 * exact_all_negative:.1f}%" in callout


def test_model_colours_match_the_figures_palette(full_report):
    from cxrlab.evaluate.figures import model_colors

    _, text = full_report
    for name, color in model_colors(MODELS).items():
        assert f'style="background: {color}"></span>{name}' in text


def test_interactive_pca_is_linked_relatively_and_the_link_resolves(full_run, tmp_path):
    for out in (full_run / "report.html", tmp_path / "elsewhere" / "r.html"):
        path = build_report(full_run, out)
        links = [
            a["href"]
            for t, a in parse(path.read_text()).tags
            if t == "a" and "interactive-link" in (a.get("class") or "")
        ]
        assert links == [
            str(Path("analysis/resnet18/pca_3d.html"))
            if out.parent == full_run
            else Path(links[0]).as_posix()
        ]
        for tag, attrs in parse(path.read_text()).tags:  # no broken relative link at all
            href = attrs.get("href") or ""
            if tag == "a" and href and not href.startswith(("#", "data:")):
                assert (path.parent / unquote(href)).resolve().is_file(), href


def test_embed_interactive_puts_the_page_in_an_iframe_srcdoc(full_run, tmp_path):
    path = build_report(full_run, tmp_path / "r.html", embed_interactive=True)
    frames = [a for t, a in parse(path.read_text()).tags if t == "iframe"]
    assert len(frames) == 1 and "<p>3-D PCA</p>" in frames[0]["srcdoc"]


def test_partial_run_with_only_data_builds_with_not_run_notes(full_run, tmp_path):
    run_dir = tmp_path / "partial"
    shutil.copytree(full_run / "data", run_dir / "data")
    text = build_report(run_dir).read_text()
    for sid in SECTION_IDS:
        assert ("Not run." in section(text, sid)) == (sid != "cohort"), sid
    cohort = section(text, "cohort")
    summary = json.loads((run_dir / "data" / "split_summary.json").read_text())
    assert summary["split_hash"] in cohort and "Leakage check passed" in cohort
    assert "cxrlab evaluate" in section(text, "summary")


def test_trained_but_not_evaluated_run_shows_training_only(full_run, tmp_path):
    run_dir = tmp_path / "trained"
    for part in ("data", "models"):
        shutil.copytree(full_run / part, run_dir / part)
    text = build_report(run_dir).read_text()
    training = section(text, "training")
    assert "Not run." not in training and training.count("its val macro AUROC") == 2
    assert "drawn by <code>cxrlab evaluate</code>" in training  # no figure yet: says why
    assert "Not run." in section(text, "metrics") and "Not run." in section(text, "summary")


def test_empty_and_missing_run_dirs(tmp_path):
    text = build_report(tmp_path).read_text()
    assert text.count("Not run.") == len(SECTION_IDS)
    with pytest.raises(DataError, match="does not exist"):
        build_report(tmp_path / "nope")


def test_corrupt_artifact_is_a_data_error_naming_the_file(full_run, tmp_path):
    run_dir = tmp_path / "broken"
    shutil.copytree(full_run, run_dir)
    bad = run_dir / "reports" / "compare" / "test" / "comparison.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        build_report(run_dir)


def test_gradcam_section_scores_beside_baselines_groups_and_notes(full_run, full_report):
    _, text = full_report
    explain = section(text, "explain")
    assert (
        explain.count("<th>pointing-game hit rate</th>") == 2
        and "random point (expected)" in explain
    )
    assert "0.750" in explain and "0.120" in explain  # Effusion: model vs random point
    assert NO_BOX_NOTE in explain
    for group in ("TP", "FP", "FN"):  # one of each per model
        assert explain.count(f'<span class="badge {group}">{group}</span>') == 2
    assert "p = 0.930 · hit · IoU 0.41" in explain and "p = 0.070 · miss" in explain


def test_missing_overlay_is_reported_not_fatal(full_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    for png in (run_dir / "reports" / "resnet18" / "explain").rglob("*.png"):
        png.unlink()
    text = build_report(run_dir).read_text()
    assert section(text, "explain").count("overlay missing") == 3


def test_data_kind_recognises_cxrlab_synth_output(full_run, tmp_path):
    from cxrlab.report.card import data_kind

    data = collect_run(full_run)
    assert data_kind(data) == "NIH ChestX-ray14"  # /data/nih: no synthetic README there
    (tmp_path / "README.txt").write_text("SYNTHETIC chest X-rays in the NIH layout.\n")
    data["cohort"]["prepare"]["data_root"] = str(tmp_path)
    assert data_kind(data) == "synthetic"
    data["provenance"]["study"] = {"data": {"data_root": None}}  # `cxrlab run` on built-in data
    assert data_kind(data) == "synthetic"


def test_summary_flags_a_best_auroc_whose_ci_includes_chance():
    def block(est, low, high):
        ci = {
            "per_class": {"T": {"auroc": {"estimate": est, "low": low, "high": high}}},
            "macro": {"auroc": {"estimate": est, "low": low, "high": high}},
        }
        return {"result": {"ci": ci}}

    rows = verdicts.best_rows(
        {"a": block(0.56, 0.45, 0.66), "b": block(0.52, 0.40, 0.61)}, ["T"], None
    )
    assert rows[0]["model"] == "a" and rows[0]["chance"] and rows[0]["kind"] == "untested"
    rows = verdicts.best_rows({"a": block(0.8, 0.7, 0.9)}, ["T"], None)
    assert not rows[0]["chance"] and rows[0]["kind"] == "single"


def test_model_card_reproduction_stages_and_limitations(full_run, full_report):
    _, text = full_report
    card = section(text, "card")
    assert f"cxrlab run {full_run / 'study.yaml'} --out {full_run}" in card
    assert f"cxrlab evaluate {full_run} --model resnet18 --split test --threshold max_f1" in card
    assert "done · 1.2 s · finished 2026-01-01T10:00:00" in card
    assert "failed · 0.5 s" in card and "error: StageError: boom" in card
    assert "Research only; not for clinical use." in card and "No external validation" in card
    summary = json.loads((full_run / "data" / "split_summary.json").read_text())
    assert summary["split_hash"] in card


def test_cooccurrence_and_demographics_from_cohort_csv(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    frame = pd.DataFrame(
        {
            "Image Index": ["a", "b", "c", "d"],
            "Patient ID": ["1", "1", "2", "3"],
            "split": ["train", "train", "val", "test"],
            "Atelectasis": [1, 1, 0, 1],
            "Effusion": [1, 0, 0, 1],
            "age": [30, 50, 70, 40],
            "sex": ["F", "M", "F", "F"],
            "view": ["PA", "AP", "PA", "PA"],
        }
    )
    frame.to_csv(data / "cohort.csv", index=False)
    (data / "split_summary.json").write_text(json.dumps({"targets": ["Atelectasis", "Effusion"]}))
    cohort = collect_cohort(tmp_path)
    assert cohort["cooccurrence"].to_numpy().tolist() == [[3, 2], [2, 2]]
    assert cohort["demographics"].loc["train", "female"] == "50.0%"
    assert collect_cohort(tmp_path / "none") is None


def test_verdicts_flip_the_pair_and_rest_on_the_holm_adjusted_bootstrap_only():
    entry = {"delta": -0.1, "low": -0.15, "high": -0.05, "p_value": 0.01, "p_holm": 0.03}
    pair = {
        "a": "x",
        "b": "y",
        "delong": {"T": {"p_value": 0.2}},
        "paired_bootstrap": {
            "n_boot": 2000,
            "per_class": {"T": {**entry, "verdict": "worse"}},
            "macro": {},
        },
    }
    found = verdicts.find_pair({"x vs y": pair}, "y", "x")
    result = verdicts.paired_result(*found, "T")
    assert (result["delta"], result["low"], result["high"]) == (0.1, 0.05, 0.15)
    kind, words = verdicts.verdict("y", "x", result, overlap=False)
    # DeLong disagrees but decides nothing; the words say what the verdict rests on
    assert kind == "better" and "Holm-adjusted p = 0.030" in words
    assert "ΔAUROC +0.100 [+0.050, +0.150]" in words
    assert "DeLong p = 0.200, assumes independent images" in words
    assert verdicts.verdict("y", None, None, None)[0] == "single"
    assert verdicts.verdict("y", "x", None, True)[1].startswith("95% CIs overlap")


def test_markdown_is_escaped_and_headings_demoted():
    html = str(markdown_html("# Title\n\n<script>x()</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |"))
    assert "<h3>Title</h3>" in html and "<script>" not in html and "<td>1</td>" in html


def test_collect_run_is_plain_data_and_report_imports_no_training_code(full_run):
    data = collect_run(full_run)
    assert data["models"] == list(MODELS) and data["comparison"]["summary"]["models"] == list(
        MODELS
    )
    code = (
        "import sys; from cxrlab.report import build_report; "
        f"build_report({str(full_run)!r}, {str(full_run / 'r2.html')!r}); "
        "bad = [m for m in ('torch', 'lightning', 'matplotlib', 'cxrlab.train', 'cxrlab.models')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cli_report_command_writes_the_file(full_run, tmp_path):
    from typer.testing import CliRunner

    import cxrlab.cli.report_command  # noqa: F401  registers `report` on the app
    from cxrlab.cli.app import app

    out = tmp_path / "cli.html"
    result = CliRunner().invoke(app, ["report", str(full_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "wrote" in result.output


def _chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (apt install chromium)")
def test_headless_chromium_loads_every_image_without_console_messages(full_report, tmp_path):
    path, _ = full_report
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        path.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body[^>]*>", done.stdout).group(0)
    assert 'data-broken-images="0"' in body, body
    assert 'data-images="26"' in body
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console


def test_verdict_section_states_its_rule_and_the_baseline_its_ci(full_report):
    """Issue 10: every conclusion with its interval and what it rests on."""
    _, text = full_report
    rule = re.search(r'id="verdict-rule">(.*?)</p>', text, re.S).group(1)
    assert "Holm" in rule and "2/(B+1)" in rule and "assumes every image is independent" in rule
    table = parse(text, "baseline-table").rows
    assert table[0][3] == "difference [95% CI]" and table[0][4] == "beats it?"
    for row in table[1:]:
        assert row[4] in ("better", "worse", "not shown")
        assert re.fullmatch(r"[+-]\d\.\d{3}\[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", row[3])


def test_report_on_val_says_its_thresholds_were_chosen_there(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    for name in MODELS:
        folder = run / "reports" / name
        result = json.loads((folder / "test" / "metrics.json").read_text())
        result["split"] = "val"
        (folder / "val" / "metrics.json").write_text(json.dumps(result))
    val_text = build_report(run, split="val").read_text()
    assert 'id="val-warning"' in val_text and "optimistic" in val_text
    assert 'id="val-warning"' not in build_report(run, tmp_path / "test.html").read_text()
