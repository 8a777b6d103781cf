"""bench/bench_cv.py's folds: every image tested once, patients whole, val apart from test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.rundata import load_run_data
from helpers_bench import load_bench
from helpers_run import make_tiny_run


def _bench():
    return load_bench("bench_cv")


def test_folds_test_every_image_once_with_whole_patients(tmp_path: Path):
    bench = _bench()
    run = make_tiny_run(tmp_path, n=120, size=16)
    base = load_run_data(run)
    cohort = base.cohort.copy()
    cohort["Patient ID"] = [f"p{i // 3}" for i in range(len(cohort))]  # 3 images a patient
    base = type(base)(**{**base.__dict__, "cohort": cohort})
    fold = bench.assign_folds(cohort, base.targets, k=4, seed=0)
    assert sorted(set(fold)) == [0, 1, 2, 3]
    assert cohort.assign(fold=fold).groupby("Patient ID")["fold"].nunique().max() == 1
    tested = np.zeros(len(cohort), int)
    for f in range(4):
        data = load_run_data(bench.fold_run(base, fold, f, 0.2, tmp_path / "work"))
        assert data.split_hash and data.images.shape == base.images.shape
        test, val = data.rows("test"), data.rows("val")
        assert set(test) == set(np.flatnonzero(fold == f)) and not set(test) & set(val)
        pid = data.cohort["Patient ID"].to_numpy()
        assert not set(pid[val]) & set(pid[data.rows("train")])  # val carved by patient
        assert 0.1 < len(val) / (len(cohort) - len(test)) < 0.3
        tested[test] += 1
    assert (tested == 1).all()
    assert all(bench.recipe_config(name, None) for name in bench.RECIPES)  # recipes validate


def test_probe_fold_fits_on_train_and_val_and_scores_the_test_rows():
    from sklearn.metrics import roc_auc_score

    bench = _bench()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (300, 2))
    features = np.hstack([y + rng.normal(0, 0.7, y.shape), rng.normal(0, 1, (300, 6))])
    split = np.array(["train"] * 180 + ["val"] * 60 + ["test"] * 60)
    probs = bench.probe_fold(features, y, split)
    assert probs.shape == (60, 2) and ((probs >= 0) & (probs <= 1)).all()
    test = split == "test"
    assert min(roc_auc_score(y[test, k], probs[:, k]) for k in range(2)) > 0.8
    shuffled = bench.probe_fold(rng.permutation(features), y, split)  # no signal left
    assert max(roc_auc_score(y[test, k], shuffled[:, k]) for k in range(2)) < 0.75


def test_a_partial_run_scores_only_the_first_folds(tmp_path: Path):
    bench = _bench()
    base = load_run_data(make_tiny_run(tmp_path, n=40, size=16))
    rows = np.arange(40) < 25
    part = bench.scored_part(base, rows)
    assert part.labels.shape == (25, len(base.targets)) and len(part.patient_ids) == 25
    assert list(part.ids) == list(np.asarray(base.ids)[:25])


def test_ensembles_average_members_and_saved_folds_land_on_their_rows(tmp_path: Path):
    bench = _bench()
    oof = {"a": np.array([[0.2, 0.4], [0.6, 0.0]]), "b": np.array([[0.4, 0.0], [0.2, 1.0]])}
    name, mean = bench.ensemble("ab=a+b", oof)
    assert name == "ab" and np.allclose(mean, [[0.3, 0.2], [0.4, 0.5]])
    with pytest.raises(SystemExit, match=r"\['c'\]"):
        bench.ensemble("ac=a+c", oof)
    fold = np.array([1, 0, 1, 0, 0])
    for f, probs in ((0, [[0.1], [0.2], [0.3]]), (1, [[0.8], [0.9]])):
        np.savez(tmp_path / f"fold{f}.npz", probs=np.array(probs))
    args = type("Args", (), {"score_folds": None, "folds": 2})
    ids = np.array(["a", "b", "c", "d", "e"])
    name, probs = bench.saved_folds(f"other={tmp_path}", fold, ids, args)
    assert name == "other" and probs[:, 0].tolist() == [0.8, 0.1, 0.9, 0.2, 0.3]
    # folds saved with their ids land by id, whatever order the other work folder used
    np.savez(tmp_path / "fold0.npz", probs=np.array([[0.3], [0.1], [0.2]]), ids=["e", "b", "d"])
    _, probs = bench.saved_folds(f"other={tmp_path}", fold, ids, args)
    assert probs[:, 0].tolist() == [0.8, 0.1, 0.9, 0.2, 0.3]
    np.savez(tmp_path / "fold0.npz", probs=np.array([[0.3], [0.1], [0.2]]), ids=["e", "b", "a"])
    with pytest.raises(SystemExit, match="fold 0 holds other images"):
        bench.saved_folds(f"other={tmp_path}", fold, ids, args)


def test_seeded_recipe_names_and_auxiliary_targets(tmp_path: Path):
    bench = _bench()
    seeded = bench.recipe_config("dpr0.2_s3", None)
    assert seeded.train.seed == 3 and seeded.model.kwargs == {"drop_path_rate": 0.2}
    assert bench.recipe_config("dpr0.2", None).train.seed == 0
    assert bench.known("plain_s7") and bench.known("probe") and not bench.known("nope_s1")
    base = load_run_data(make_tiny_run(tmp_path, n=40, size=16))
    narrowed = bench.scored_targets(base, 1)
    assert narrowed.targets == base.targets[:1] and narrowed.labels.shape == (40, 1)
    assert narrowed.cohort is base.cohort  # fold runs still train on every target
