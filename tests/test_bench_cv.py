"""bench/bench_cv.py's folds: every image tested once, patients whole, val apart from test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
