"""The public Python API (`cxrlab.api`, re-exported as `cxrlab.*`) is the CLI's twin.

Each function is called with the same arguments as its command and must write the same
files (byte for byte where the content is deterministic); defaults of the API, the config
sections and the CLI are one set of values; `import cxrlab` loads no torch.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from matplotlib.figure import Figure
from typer.testing import CliRunner

import cxrlab
from cxrlab import api
from cxrlab.cli import app
from cxrlab.cli.options import field_default
from cxrlab.config import (
    TRAIN_OPTIONS,
    TRANSFER_RECIPE,
    AnalyzeConfig,
    CrossvalConfig,
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    ExplainConfig,
    PredictConfig,
    SyntheticConfig,
    experiment_default,
)
from cxrlab.errors import CxrError

REPO = Path(__file__).resolve().parents[1]
TARGETS = "Atelectasis,Effusion"
TINY_MODEL = {"model": {"name": "simple_cnn", "kwargs": {"base_width": 4, "depth": 2}}}

#: API function -> (CLI command, config section or None, {API name: CLI name} where they differ)
TWINS = {
    "synth": ("synth", SyntheticConfig, {}),
    "prepare": ("prepare", DataConfig, {}),
    "evaluate": ("evaluate", EvaluateConfig, {"target_sensitivity": "sensitivity"}),
    "compare": ("compare", EvaluateConfig, {}),
    "crossval": ("crossval", CrossvalConfig, {}),
    "analyze": ("analyze", AnalyzeConfig, {}),
    "explain": ("explain", ExplainConfig, {}),
    "report": ("report", None, {}),
    "run_study": ("run", None, {}),
    "train": ("train", None, {}),
    "export": ("export", None, {}),
    "predict": ("predict", PredictConfig, {}),
}
#: Section fields a stage function leaves out, with the reason.
NOT_ARGUMENTS = {
    "prepare": {"data_root"},  # positional, required
    "analyze": {"enabled", "model"},  # study-level: whether and which model; `model` is positional
    "explain": {"enabled", "models"},  # study-level
    # compare takes only the bootstrap options of EvaluateConfig; the others are evaluate's
    "compare": set(EvaluateConfig.model_fields) - {"split", "bootstrap", "seed"},
    "predict": {"threads"},  # a process-wide torch setting: the CLI's, not a library call's
}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _api_defaults(name: str) -> dict:
    params = inspect.signature(getattr(api, name)).parameters.values()
    return {p.name: _plain(p.default) for p in params if p.default is not inspect.Parameter.empty}


def _cli_params(command: str) -> dict:
    click_command = typer.main.get_command(app).commands[command]
    return {p.name: p for p in click_command.params}


# ---- one public surface, light to import ----------------------------------------------------
def test_the_public_names_are_listed_once_and_resolve():
    from cxrlab import results

    public = [*api.__all__, *results.__all__]
    assert sorted(n for n in cxrlab.__all__ if n != "__version__") == sorted(public)
    for module in (api, results):
        for name in module.__all__:
            assert getattr(cxrlab, name) is getattr(module, name)
            assert inspect.getdoc(getattr(module, name)), f"{name} has no docstring for help()"


def test_import_cxrlab_is_fast_and_loads_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); import cxrlab; s = time.perf_counter() - t; "
        "heavy = ('torch', 'lightning', 'timm', 'pandas', 'matplotlib', 'sklearn'); "
        "print(s, [m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, loaded = out.stdout.split(" ", 1)
    assert loaded.strip() == "[]"
    print(f"import cxrlab: {float(seconds):.2f} s")
    assert float(seconds) < 5  # torch alone takes ~3 s here; a slack bound for a loaded machine


def test_the_public_functions_survive_the_import_of_their_namesake_subpackages():
    """In a fresh interpreter: Python binds a subpackage onto `cxrlab` when it is first
    imported; `cxrlab.train` (and the others) must stay the API's functions."""
    code = (
        "import sys, cxrlab, cxrlab.api as api\n"
        "from cxrlab.train import engine\n"
        "from cxrlab.evaluate.workflow import evaluate_model\n"
        "from cxrlab.explain import workflow\n"
        "from cxrlab.report.build import build_report\n"
        "from cxrlab.synth import write_synthetic_dataset\n"
        "names = ('train', 'evaluate', 'explain', 'report', 'synth')\n"
        "print([n for n in names if getattr(cxrlab, n) is not getattr(api, n)],"
        " [n for n in names if type(sys.modules['cxrlab.' + n]).__name__ != 'module'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"


def test_no_code_reaches_a_stage_subpackage_through_the_cxrlab_attribute():
    """`import cxrlab.train.engine as e` and `"cxrlab.train.engine.x"` patch strings resolve
    `cxrlab.train` as an attribute, which is the API function; use `from cxrlab.train import
    engine` (through sys.modules) instead."""
    shadowed = "|".join(n for n in api.__all__ if n.islower())
    bad = re.compile(rf"import cxrlab\.({shadowed})\.\S+ as |[\"']cxrlab\.({shadowed})\.\w+\.")
    offenders = [
        f"{path.relative_to(REPO)}:{i}"
        for folder in ("src", "tests", "bench")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "test_api.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if bad.search(line)
    ]
    assert offenders == []


# ---- one set of defaults ---------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, (_, section, _) in TWINS.items() if section])
def test_api_defaults_are_the_sections_defaults(name):
    _, section, _ = TWINS[name]
    defaults = _api_defaults(name)
    expected = set(section.model_fields) - NOT_ARGUMENTS.get(name, set())
    assert expected <= set(defaults), f"{name} lacks {expected - set(defaults)}"
    for field in expected:
        assert defaults[field] == field_default(section, field), (name, field)


@pytest.mark.parametrize("name", list(TWINS))
def test_every_shared_option_has_one_default_in_api_and_cli(name):
    command, _, renamed = TWINS[name]
    cli = _cli_params(command)
    shared = 0
    for arg, default in _api_defaults(name).items():
        flag = renamed.get(arg, arg)
        if flag not in cli:
            continue
        shared += 1
        cli_default = cli[flag].default
        if name == "train" and arg in TRAIN_OPTIONS:  # not given: keep the config file's
            assert cli_default is None, flag
        elif name == "analyze" and arg == "seed":  # the section's None means 0 on the CLI
            assert (default, cli_default) == (None, 0)
        elif isinstance(default, list):
            assert cli_default == ",".join(default), (name, arg)
        else:
            assert default == cli_default, (name, arg, default, cli_default)
    assert shared >= 2, f"{name}: no option in common with `cxrlab {command}`?"


def test_train_options_are_the_cli_flags_and_default_to_experiment_config():
    assert set(TRAIN_OPTIONS) <= set(_cli_params("train"))
    defaults = _api_defaults("train")
    by_recipe = {f"{s}.{k}" for s, keys in TRANSFER_RECIPE.items() for k in keys}
    assert {"train.epochs", "optim.lr", "train.select"} <= by_recipe
    for flag, dotted in TRAIN_OPTIONS.items():
        if dotted in by_recipe:  # None: the config's value, from scratch or the recipe's
            assert defaults[flag] is None, flag
        else:
            assert defaults[flag] == experiment_default(dotted), flag
    assert experiment_default("optim.lr") == ExperimentConfig().optim.lr


def test_train_with_a_config_file_keeps_its_values_unless_an_option_is_changed(
    tmp_path, monkeypatch
):
    from cxrlab.train import engine

    seen = {}
    monkeypatch.setattr(engine, "train_model", lambda run, config, name, *a, **k: seen.update(
        config=config, name=name))  # fmt: skip
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 3, "batch_size": 8}, **TINY_MODEL}))
    result = cxrlab.train(tmp_path / "run", config=config, batch_size=32, lr=0.01, name="m")
    resolved = seen["config"]
    assert resolved.train.epochs == 3  # API default (30) left alone: the file's value
    assert resolved.train.batch_size == 8  # 32 is the default: the file wins, as documented
    assert resolved.optim.lr == 0.01 and resolved.model.kwargs == TINY_MODEL["model"]["kwargs"]
    assert seen["name"] == "m" and result.path == tmp_path / "run" / "models" / "m"
    cxrlab.train(tmp_path / "run", "resnet18", epochs=2, model_kwargs={})
    assert seen["config"].model.name == "resnet18" and seen["config"].train.epochs == 2
    assert seen["name"] == "resnet18"


# ---- the same files as the CLI ---------------------------------------------------------------
def _cli(*args) -> None:
    """`cxrlab ARGS` in this process (no interpreter start-up per command)."""
    handlers = list(logging.root.handlers)  # the CLI's basicConfig logs to the runner's stream
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        logging.root.handlers[:] = handlers
    assert result.exit_code == 0, (args, result.output, result.exception)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _same_bytes(a: Path, b: Path, relative: str) -> None:
    assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same tiny study twice: `cli/` through the commands, `api/` through cxrlab.*."""
    root = tmp_path_factory.mktemp("twins")
    cli, py = root / "cli", root / "api"
    exp = root / "tiny.yaml"
    exp.write_text(yaml.safe_dump({**TINY_MODEL, "train": {"patience": 3}}))
    _cli("synth", cli / "data", "--patients", 24, "--image-size", 64, "--seed", 1)
    info = cxrlab.synth(py / "data", patients=24, image_size=64, seed=1)
    common = ["--pathologies", TARGETS, "--image-size", 32, "--test", 0.35]
    _cli("prepare", "--data-root", cli / "data", "--out", cli / "run", *common)
    run = cxrlab.prepare(
        cli / "data", py / "run", pathologies=TARGETS, image_size=32, test=0.35, progress=False
    )
    _cli("train", cli / "run", "--config", exp, "--epochs", 2, "--batch-size", 8, "--name", "m")
    training = cxrlab.train(run, config=exp, epochs=2, batch_size=8, name="m", progress=False)
    _cli("evaluate", cli / "run", "--model", "m", "--bootstrap", 20, "--device", "cpu")
    evaluation = cxrlab.evaluate(run, "m", bootstrap=20, device="cpu", progress=False)
    _cli("compare", cli / "run", "--bootstrap", 20)
    comparison = cxrlab.compare(run, bootstrap=20)
    _cli("analyze", cli / "run", "--model", "m", "--k", 2, "--n-components", 4)
    analysis = cxrlab.analyze(run, "m", k=2, n_components=4, progress=False)
    _cli("explain", cli / "run", "--model", "m", "--per-group", 1, "--no-progress")
    explanation = cxrlab.explain(run, "m", per_group=1, progress=False)
    _cli("report", cli / "run")
    page = cxrlab.report(run)
    return {
        "cli": cli, "api": py, "info": info, "run": run, "training": training,
        "evaluation": evaluation, "comparison": comparison, "analysis": analysis,
        "explanation": explanation, "report": page,
    }  # fmt: skip


def test_synth_writes_the_same_bytes_as_cxrlab_synth(twins):
    a, b = twins["cli"] / "data", twins["api"] / "data"
    assert _files(a) == _files(b) and len(_files(a)) > 20
    for relative in _files(a):
        _same_bytes(a, b, relative)
    assert twins["info"].root == b


def test_prepare_writes_the_same_cohort_split_and_cache(twins):
    a, b = twins["cli"] / "run" / "data", twins["api"] / "run" / "data"
    assert _files(a) == _files(b)
    for relative in ("cohort.csv", "split_summary.json", "boxes.csv", "cache/images.u8"):
        _same_bytes(a, b, relative)
    prepared = [json.loads((d / "prepare.json").read_text()) for d in (a, b)]
    assert prepared[0]["options"] == prepared[1]["options"]


def test_train_writes_the_same_model_folder(twins):
    a, b = twins["cli"] / "run" / "models" / "m", twins["api"] / "run" / "models" / "m"
    assert _files(a) == _files(b)
    _same_bytes(a, b, "config.yaml")
    curves = [pd.read_csv(d / "metrics.csv").drop(columns="seconds") for d in (a, b)]
    pd.testing.assert_frame_equal(*curves)


def test_evaluate_compare_analyze_explain_report_write_the_same_files(twins):
    a, b = twins["cli"] / "run", twins["api"] / "run"
    for folder in ("reports", "analysis"):
        assert _files(a / folder) == _files(b / folder)
    assert (a / "report.html").is_file() and twins["report"] == b / "report.html"
    metrics = [json.loads((d / "reports/m/test/metrics.json").read_text()) for d in (a, b)]
    assert metrics[0]["metrics"] == metrics[1]["metrics"] and metrics[0]["ci"] == metrics[1]["ci"]
    for relative in ("analysis/m/analysis.json", "reports/compare/test/comparison.json"):
        _same_bytes(a, b, relative)
    local = [json.loads((d / "reports/m/explain/localization.json").read_text()) for d in (a, b)]
    assert local[0]["per_pathology"] == local[1]["per_pathology"]


def test_export_and_predict_give_what_the_commands_give(twins, tmp_path):
    run, images = twins["api"] / "run", twins["api"] / "data" / "images"
    _cli("export", run, "--model", "m", "--out", tmp_path / "cli_export")
    folder = cxrlab.export(run, "m", tmp_path / "api_export")
    assert _files(tmp_path / "cli_export") == _files(folder)
    cards = [json.loads((d / "model.json").read_text()) for d in (tmp_path / "cli_export", folder)]
    for card in cards:
        card.pop("exported", None)  # a timestamp
    assert cards[0] == cards[1]
    pngs = sorted(images.glob("*.png"))[:5]
    _cli("predict", *pngs, "--model", folder, "--out", tmp_path / "cli.csv", "--no-progress")
    frame = cxrlab.predict(folder, pngs, tmp_path / "api.csv", progress=False)
    assert len(frame) == 5 and not frame["error"].astype(bool).any()
    assert (tmp_path / "cli.csv").read_bytes() == (tmp_path / "api.csv").read_bytes()


# ---- what the results show -------------------------------------------------------------------
def test_run_shows_the_cohort_and_the_leakage_check(twins):
    run = twins["run"]
    cohort = run.cohort
    assert list(cohort.columns[:3]) == ["Image Index", "Patient ID", "split"]
    assert run.targets == TARGETS.split(",") and run.patient_overlap == 0
    splits = run.splits
    assert splits["images"].sum() == len(cohort)
    for name, part in cohort.groupby("split"):
        assert splits.loc[name, "patients"] == part["Patient ID"].nunique()
    assert run.models == ["m"] and cxrlab.open_run(run.path) == run
    with pytest.raises(CxrError, match="cohort.csv not found"):
        cxrlab.open_run(twins["api"])


def test_training_history_is_one_row_per_epoch(twins):
    training = twins["training"]
    assert training.name == "m" and len(training.history) == 2
    assert training.best_epoch in (0, 1)
    assert isinstance(training.figure(), Figure)


def test_evaluation_tables_put_metrics_beside_baselines(twins):
    ev = twins["evaluation"]
    assert list(ev.table.index) == [*TARGETS.split(","), "macro", "micro"]
    baseline = ev.baseline
    assert "all-negative predictor" in baseline.columns
    assert list(baseline.index) == ["Hamming accuracy", "exact match"]
    assert {"roc", "confusion", "training"} <= set(ev.figures)
    assert len(ev.predictions) == ev.result["n_images"]


def test_figure_returns_the_stages_png_as_a_matplotlib_figure(twins):
    from matplotlib.image import imread

    ev = twins["evaluation"]
    fig = ev.figure("roc")
    height, width = imread(ev.figures["roc"]).shape[:2]
    w_in, h_in = fig.get_size_inches()
    assert isinstance(fig, Figure) and abs(h_in / w_in - height / width) < 1e-6
    with pytest.raises(CxrError, match="no figure 'nope'.*roc"):
        ev.figure("nope")


def test_comparison_analysis_and_explanation_read_their_stage(twins):
    comparison, analysis = twins["comparison"], twins["analysis"]
    assert list(comparison.table.index) == ["m"]
    assert list(comparison.table.columns) == [*TARGETS.split(","), "macro"]
    assert analysis.summary.startswith("# Unsupervised analysis")
    assert analysis._repr_markdown_() == analysis.summary
    assert {"pca_scatter", "confounds"} <= set(analysis.figures)
    confounds = analysis.confounds
    attributes = set(confounds["attribute"])
    assert {f"pathology: {t}" for t in TARGETS.split(",")} | {"view", "sex"} <= attributes
    assert set(confounds["kind"]) == {"pathology", "metadata"}
    assert analysis.strongest["kind"] in ("pathology", "metadata")
    explanation = twins["explanation"]
    assert list(explanation.localization.index) == TARGETS.split(",")
    assert set(explanation.figures) == set(TARGETS.split(","))


@pytest.mark.slow
def test_run_study_writes_what_cxrlab_run_writes(tmp_path):
    study = {
        "synthetic": {"patients": 16, "image_size": 64},
        "data": {"pathologies": TARGETS.split(","), "image_size": 32, "test": 0.3},
        "models": [{"name": "tiny", **TINY_MODEL, "train": {"epochs": 1, "batch_size": 8}}],
        "evaluate": {"bootstrap": 10},
        "analyze": {"enabled": False},
        "explain": {"enabled": False},
    }
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    _cli("run", config, "--out", tmp_path / "cli")
    run = cxrlab.run_study(config, tmp_path / "api", progress=False)
    assert _files(tmp_path / "cli") == _files(tmp_path / "api")
    _same_bytes(tmp_path / "cli", tmp_path / "api", "study.yaml")
    assert set(run.stages["status"]) == {"done"} and "train:tiny" in run.stages.index


def test_list_layers_is_analyze_list_layers(twins):
    result = CliRunner().invoke(app, ["analyze", str(twins["cli"] / "run"), "--model", "m",
                                      "--list-layers"])  # fmt: skip
    assert result.exit_code == 0, result.output
    layers = cxrlab.list_layers(twins["run"], "m")
    assert "penultimate" in layers and result.output.split() == layers


def test_a_reopened_run_reads_back_every_stage(twins):
    run = cxrlab.open_run(twins["run"].path)
    pd.testing.assert_frame_equal(run.evaluation("m").table, twins["evaluation"].table)
    assert run.training("m").history.shape == twins["training"].history.shape
    assert run.comparison().summary == twins["comparison"].summary
    assert run.analysis("m").result == twins["analysis"].result
    assert run.explanation("m").figures == twins["explanation"].figures
    with pytest.raises(CxrError, match="no trained model 'nope'"):
        run.training("nope")
