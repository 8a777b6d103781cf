"""`cxrlab predict`: a model on files, one output row per file, errors as rows.

Columns of the CSV: `file`, `error` (empty when the image was read), then per target
`p_<target>` (probability) and `finding_<target>` (0/1 at its threshold), `findings` (the
positive targets joined by `|`), `model`, `model_version`, `threshold_rule` (e.g. `max_f1`,
or `default_0.5` when no validation thresholds existed) and, with overlays, `cam` (their
paths joined by `|`). A JSON file beside it records the thresholds and the model card.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrlab.data.imaging import read_square_u8
from cxrlab.errors import CxrError
from cxrlab.predict.files import InputFile, expand_inputs
from cxrlab.predict.predictor import Predictor
from cxrlab.runinfo import write_atomic, write_json

log = logging.getLogger(__name__)

#: Overlays are drawn at least this many pixels wide (nearest-neighbour enlargement).
CAM_MIN_SIDE = 256


@dataclass(frozen=True)
class PredictResult:
    frame: pd.DataFrame  # one row per input file, in input order
    out_csv: Path
    n_failed: int


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out_csv: str | Path,
    *,
    cam_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> PredictResult:
    """Predict every image named by `inputs` (files, folders, globs); write the CSV."""
    files = expand_inputs(inputs)
    rows: list[dict] = []
    bar = tqdm(total=len(files), desc="predicting", unit="image", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        rows.extend(_predict_chunk(predictor, chunk, start, cam_dir))
        bar.update(len(chunk))
    bar.close()
    frame = pd.DataFrame(rows, columns=_columns(predictor, cam_dir is not None))
    out_csv = Path(out_csv)
    write_atomic(out_csv, frame.to_csv(index=False))
    write_json(out_csv.with_suffix(".json"), _sidecar(predictor, len(frame)))
    n_failed = int(frame["error"].astype(bool).sum())
    log.info("%d images predicted, %d failed; wrote %s", len(frame) - n_failed, n_failed, out_csv)
    return PredictResult(frame, out_csv, n_failed)


def _predict_chunk(predictor: Predictor, chunk: list[InputFile], offset: int, cam_dir):
    images, rows = [], []
    for entry in chunk:
        row = {"file": entry.label, "error": entry.error or ""}
        if entry.path is not None and not entry.error:
            try:
                images.append(read_square_u8(entry.path, predictor.image_size))
            except CxrError as exc:  # one bad file never stops the batch
                row["error"] = str(exc)
        rows.append(row)
    ok = [i for i, row in enumerate(rows) if not row["error"]]
    if not ok:
        return [_fill(predictor, row, None, None) for row in rows]
    batch = np.stack(images)  # (B, S, S) uint8
    probs = predictor.predict_u8(batch)  # (B, K)
    called = predictor.findings(probs)
    out = [_fill(predictor, row, None, None) for row in rows]
    for j, i in enumerate(ok):
        out[i] = _fill(predictor, rows[i], probs[j], called[j])
        if cam_dir is not None:
            out[i]["cam"] = "|".join(
                str(p)
                for p in _overlays(predictor, batch[j], called[j], offset + i, rows[i], cam_dir)
            )
    return out


def _fill(predictor: Predictor, row: dict, probs, called) -> dict:
    out = dict(row)
    for k, target in enumerate(predictor.targets):
        out[f"p_{target}"] = None if probs is None else float(probs[k])
        out[f"finding_{target}"] = None if called is None else int(called[k])
    names = (
        [] if called is None else [t for t, c in zip(predictor.targets, called, strict=True) if c]
    )
    out["findings"] = "|".join(names)
    out["model"] = predictor.card.name
    out["model_version"] = predictor.card.version
    out["threshold_rule"] = predictor.card.threshold_rule
    return out


def _overlays(predictor: Predictor, image_u8, called, index: int, row: dict, cam_dir) -> list[Path]:
    """A Grad-CAM overlay PNG per positive finding of one image."""
    from cxrlab.explain.gallery import enlarge, overlay, save_png

    paths = []
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(row["file"]).name.split(".")[0]) or "image"
    for k in np.flatnonzero(called):
        cam = predictor.cam(image_u8, int(k))
        big, big_cam, _, _ = enlarge(image_u8, cam, (), None, min_side=CAM_MIN_SIDE)
        target = predictor.targets[k]
        path = Path(cam_dir) / f"{index:05d}_{stem}_{target}.png"
        paths.append(save_png(path, overlay(big, big_cam)))
    return paths


def _columns(predictor: Predictor, with_cam: bool) -> list[str]:
    per_target = [c for t in predictor.targets for c in (f"p_{t}", f"finding_{t}")]
    tail = ["findings", "model", "model_version", "threshold_rule"]
    return ["file", "error", *per_target, *tail, *(["cam"] if with_cam else [])]


def _sidecar(predictor: Predictor, n: int) -> dict:
    card = predictor.card
    return {
        "n_files": n,
        "runtime": predictor.runtime,
        "model_source": predictor.source,
        "thresholds": dict(zip(predictor.targets, predictor.thresholds.tolist(), strict=True)),
        "threshold_rule": card.threshold_rule,
        "thresholds_from": card.thresholds_from,
        "temperature": card.temperature,
        "card": card.model_dump(mode="json"),
    }
