"""`cxrlab run CONFIG`: the whole study in one run directory, re-runnable stage by stage.

prepare → train (each model) → evaluate (each) → compare → analyze → explain (each) → report.

Each stage has an input key: a hash of its config section and of what it consumes (the
split hash, a checkpoint's hash, the keys of the stages before it). A stage whose key and
outputs are unchanged since its last success is skipped; any other runs. `stages.json` in the
run directory records every stage's key, status and time. A failing stage raises
`StageError` naming it; what earlier stages wrote stays intact. A stage is marked `running`
before it starts, so one that was killed (Ctrl-C, OOM) is never mistaken for a finished one;
a training stage killed or failed with unchanged inputs resumes from its last saved epoch.
The report stage also gathers the comparison figures and each model's training curve into
`RUN_DIR/figures/`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrlab.config import (
    ModelEntry,
    StudyConfig,
    experiment_of,
    stage_key_fields,
    to_yaml,
)
from cxrlab.data.cache import META_FILE
from cxrlab.errors import StageError
from cxrlab.locking import exclusive
from cxrlab.rundir import ANALYSIS_FILE, COMPARISON_FILE, LOCALIZATION_FILE, RunDir, SplitDir
from cxrlab.runinfo import (
    package_versions,
    read_json,
    sha256_file,
    sha256_json,
    write_atomic,
    write_json,
)

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    name: str
    status: str  # done | skipped | failed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class StudyResult:
    run_dir: Path
    records: list[StageRecord] = field(default_factory=list)
    report: Path | None = None

    def ran(self) -> list[str]:
        return [r.name for r in self.records if r.status == "done"]

    def skipped(self) -> list[str]:
        return [r.name for r in self.records if r.status == "skipped"]


class _Ledger:
    """stages.json: the key each stage last succeeded with."""

    def __init__(self, paths: RunDir) -> None:
        self.path = paths.stages
        self.entries: dict[str, dict] = read_json(self.path) if self.path.is_file() else {}

    def fresh(
        self, stage: str, key: str, outputs: list[Path], valid: Callable[[], bool] | None = None
    ) -> bool:
        entry = self.entries.get(stage, {})
        return (
            entry.get("status") == "done"
            and entry.get("key") == key
            and all(p.exists() for p in outputs)
            and (valid is None or valid())
        )

    def record(self, stage: str, key: str, status: str, seconds: float, error: str = "") -> None:
        self.entries[stage] = {
            "key": key,
            "status": status,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "error": error,
        }
        write_json(self.path, self.entries)


class Study:
    """One `cxrlab run`: holds the config, the run directory and the stage ledger."""

    def __init__(
        self,
        config: StudyConfig,
        run_dir: str | Path,
        *,
        progress: bool = True,
        on_stage: Callable[[StageRecord], None] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.paths = RunDir(self.run_dir)
        self.progress = progress
        self.on_stage = on_stage or (lambda record: None)
        self.entries = config.model_entries()
        self.result = StudyResult(self.run_dir)

    # -- running ------------------------------------------------------------------------
    def run(self) -> StudyResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.paths.lock, f"run directory {self.run_dir}"):
            return self._run()

    def _run(self) -> StudyResult:
        self.ledger = _Ledger(self.paths)
        write_atomic(self.paths.study_yaml, to_yaml(self.config))
        write_json(self.paths.versions, package_versions())
        data_key = self._stage_prepare()
        for entry in self.entries:
            self._stage_train(entry, data_key)
        for entry in self.entries:
            self._stage_evaluate(entry)
        self._stage_compare()
        self._stage_analyze()
        for entry in self._explained():
            self._stage_explain(entry)
        self._stage_report()
        return self.result

    def _step(
        self,
        stage: str,
        key: str,
        outputs: list[Path],
        work: Callable[[], Any],
        valid: Callable[[], bool] | None = None,
    ) -> None:
        if self.ledger.fresh(stage, key, outputs, valid):
            record = StageRecord(stage, "skipped", detail="inputs unchanged")
            self.result.records.append(record)
            self.on_stage(record)
            return
        self.ledger.record(stage, key, "running", 0.0)  # until it succeeds, never "fresh"
        start = time.perf_counter()
        try:
            work()
        except Exception as exc:  # any failure is reported with the stage it happened in
            seconds = time.perf_counter() - start
            self.ledger.record(stage, key, "failed", seconds, f"{type(exc).__name__}: {exc}")
            raise StageError(f"stage {stage!r} failed: {exc}") from exc
        seconds = time.perf_counter() - start
        self.ledger.record(stage, key, "done", seconds)
        record = StageRecord(stage, "done", seconds)
        self.result.records.append(record)
        self.on_stage(record)

    # -- stages -------------------------------------------------------------------------
    def _stage_prepare(self) -> str:
        from cxrlab.data.prepare import prepare

        data = self.config.data
        if data.data_root is None:
            synth_key = sha256_json(self.config.synthetic.model_dump())
            synth_dir = self.paths.synthetic_data
            self._step(
                "synth",
                synth_key,
                [synth_dir / "Data_Entry_2017.csv"],
                lambda: self._synth(synth_dir),
            )
            # the key names the synthetic config, not the folder: a moved run stays fresh
            key = sha256_json([data.model_dump(exclude={"workers"}), synth_key])
            data = data.model_copy(update={"data_root": str(synth_dir)})
        else:
            key = sha256_json(data.model_dump(exclude={"workers"}))
        outputs = [self.paths.cohort, self.paths.split_summary, self.paths.cache / META_FILE]
        self._step(
            "prepare",
            key,
            outputs,
            # the study's models are retrained whenever the data changes (their key has it)
            lambda: prepare(data, self.run_dir, progress=self.progress, overwrite=True),
        )
        return read_json(self.paths.split_summary)["split_hash"]

    def _synth(self, out: Path) -> None:
        from cxrlab.synth import write_synthetic_dataset

        s = self.config.synthetic
        write_synthetic_dataset(
            out, patients=s.patients, seed=s.seed, image_size=s.image_size, overwrite=True
        )

    def _stage_train(self, entry: ModelEntry, split_hash: str) -> None:
        from cxrlab.models.checkpoint import is_readable
        from cxrlab.train.engine import train_model

        experiment = experiment_of(entry)
        key = sha256_json([experiment.model_dump(mode="json"), split_hash])
        folder = self.paths.model(entry.name)
        stage = f"train:{entry.name}"
        # Killed or failed mid-way with these very inputs (the key holds the config and the
        # split): continue from its last finished epoch instead of starting over.
        previous = self.ledger.entries.get(stage, {})
        resume = (
            previous.get("key") == key
            and previous.get("status") in ("running", "failed")
            and is_readable(folder.last_ckpt)
        )

        def work() -> None:
            if resume:
                log.info("resuming %s from %s", stage, folder.last_ckpt)
                train_model(self.run_dir, experiment, entry.name, resume=True,
                            progress_bar=self.progress)  # fmt: skip
            else:
                train_model(self.run_dir, experiment, entry.name, overwrite=True,
                            progress_bar=self.progress)  # fmt: skip

        self._step(
            stage,
            key,
            [folder.best_ckpt],
            work,
            # a checkpoint damaged since (full disk, kill while copied) trains again
            valid=lambda: is_readable(folder.best_ckpt) and is_readable(folder.last_ckpt),
        )

    def _ckpt_key(self, name: str) -> str:
        path = self.paths.model(name).best_ckpt
        return sha256_file(path) if path.is_file() else "missing"

    def _stage_evaluate(self, entry: ModelEntry) -> None:
        from cxrlab.evaluate.workflow import evaluate_model

        ev = self.config.evaluate
        key = sha256_json([stage_key_fields(ev), self._ckpt_key(entry.name)])
        out = self.paths.evaluation(entry.name, ev.split).metrics
        self._step(
            f"evaluate:{entry.name}",
            key,
            [out],
            lambda: evaluate_model(self.run_dir, entry.name, ev, progress=self.progress),
        )

    def _stage_compare(self) -> None:
        from cxrlab.evaluate.compare import compare_models

        names = [e.name for e in self.entries]
        key = sha256_json([self.ledger.entries.get(f"evaluate:{n}", {}).get("key") for n in names])
        out = self.paths.comparison("test") / COMPARISON_FILE
        ev = self.config.evaluate
        self._step(
            "compare",
            key,
            [out],
            lambda: compare_models(self.run_dir, "test", names, n_boot=ev.bootstrap, seed=ev.seed),
        )

    def _analysis_model(self) -> str:
        names = [e.name for e in self.entries]
        chosen = self.config.analyze.model or names[-1]
        if chosen not in names:
            raise StageError(f"stage 'analyze': model {chosen!r} is not in the study ({names})")
        return chosen

    def _stage_analyze(self) -> None:
        from cxrlab.analysis.workflow import analyze_model

        an = self.config.analyze
        if not an.enabled:
            return
        if an.seed is None:  # K-Means follows the data seed unless the study sets its own
            an = an.model_copy(update={"seed": self.config.data.seed})
        name = self._analysis_model()
        key = sha256_json([stage_key_fields(an), name, self._ckpt_key(name)])
        out = self.paths.analysis(name) / ANALYSIS_FILE
        self._step(
            f"analyze:{name}",
            key,
            [out],
            lambda: analyze_model(self.run_dir, name, an, progress=self.progress),
        )

    def _explained(self) -> list[ModelEntry]:
        ex = self.config.explain
        if not ex.enabled:
            return []
        wanted = ex.models or [e.name for e in self.entries]
        return [e for e in self.entries if e.name in wanted]

    def _stage_explain(self, entry: ModelEntry) -> None:
        from cxrlab.explain.workflow import explain_model

        ex = self.config.explain
        key = sha256_json(
            [
                stage_key_fields(ex),
                self._ckpt_key(entry.name),
                self.ledger.entries.get(f"evaluate:{entry.name}", {}).get("key"),
            ]
        )
        out = self.paths.explanation(entry.name) / LOCALIZATION_FILE
        self._step(
            f"explain:{entry.name}",
            key,
            [out],
            lambda: explain_model(self.run_dir, entry.name, ex, progress=self.progress),
        )

    def _stage_report(self) -> None:
        from cxrlab.report.build import build_report

        key = sha256_json(
            {k: v.get("key") for k, v in self.ledger.entries.items() if k != "report"}
        )
        out = self.paths.report_html
        names = [e.name for e in self.entries]

        def work() -> None:
            collect_figures(self.run_dir, names)
            build_report(self.run_dir)

        self._step("report", key, [out, self.paths.figures], work)
        self.result.report = out


def collect_figures(run_dir: str | Path, names: list[str], split: str = "test") -> list[Path]:
    """Copy the comparison figures and each model's training curve into RUN_DIR/figures/.

    Names are flat: `compare_<figure>.png|svg` and `training_<model>.png|svg`. Files of those
    two kinds left by an earlier run are removed first; anything else in the folder stays.
    """
    paths = RunDir(run_dir)
    out = paths.figures
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("compare_*"), *out.glob("training_*")]:
        old.unlink()
    sources: dict[str, Path] = {}
    for path in sorted(SplitDir(paths.comparison(split)).figures.glob("*")):
        if path.suffix in (".png", ".svg"):
            sources[f"compare_{path.name}"] = path
    for name in names:
        for path in sorted(paths.evaluation(name, split).figures.glob("training.*")):
            sources[f"training_{name}{path.suffix}"] = path
    for target, source in sources.items():
        shutil.copyfile(source, out / target)
    log.info("collected %d figures into %s", len(sources), out)
    return [out / target for target in sources]


def run_study(config: StudyConfig, run_dir: str | Path, **kwargs) -> StudyResult:
    """Run (or resume) the study `config` in `run_dir`."""
    return Study(config, run_dir, **kwargs).run()
