"""Benchmark CAM methods x layers x models: pointing game, IoU and faithfulness on boxes.

For every trained model of RUN_DIR (e.g. a finished `cxrlab demo`, whose synthetic boxes are
exact, or a run on real boxed NIH images), every (image, pathology) pair of the split that
is positive and has a box is explained by each method of `gradcam.CAM_METHODS` at each
candidate layer:

* auto: `target_layer_names(model, S)`, the default: the deepest stages whose maps are
  >= 14x14 and >= 7x7 at S, fused (averaged by the library; one layer where they coincide),
* 14x14: the deepest stage >= 14x14 alone (`MIN_CAM_SIDE`),
* 7x7: the deepest stage >= 7x7 alone (`COARSE_CAM_SIDE`; the first rule of issue 16),
* deepest: the last feature stage (the map the head pools; the layer before issue 16),
* finer: the stage before the 14x14 one (twice its resolution).

Each method of `gradcam.REFERENCE_METHODS` is also run with a reference film ("+ref" rows):
`reference_activations` over the run's training images without any target finding, so the
map weights the activations' change from an average sign-free film.

Printed per configuration: the pointing-game hit rate of every finding with >= --min-boxes
pairs beside the random-point and centre-point baselines, the issue's target per finding
(hit >= 2x random, and > centre where centre < 0.5), mean IoU, deletion and insertion AUC
(`explain.faithfulness`, with random-ranking references per model: noise per pixel and on
grids as coarse as the default layers' maps, the reference the explain stage uses; on
--faith-pairs pairs per finding, at the auto and 7x7 layers: each curve costs 2 * steps
forward images per pair) and CAM time per pair.
All numbers of one table come from one run on one machine.

`--films N` (synthetic runs only) adds a second table on N freshly drawn films per finding,
each holding that one sign alone (`cxrlab.synth`: random patient, shot and sign; rendered
at --film-size and resized like the cache): the issue's "one sign, does the map peak in
its box" with as many pairs as wanted, and no co-occurring signs. Beside it, per finding,
the share of films whose logit is above that of the same film drawn without the sign: the
model detects the sign itself (not only findings or views that come with it).

Usage: HF_HUB_OFFLINE=1 python bench/bench_explain.py RUN_DIR [--models a,b] [--films 40]
Results go into docs/benchmarks.md with the machine and its load. The run directory is only
read.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cxrlab.data.rundata import load_run_data
from cxrlab.explain import faithfulness as fa
from cxrlab.explain import localization as loc
from cxrlab.explain.gradcam import (
    CAM_METHODS,
    REFERENCE_METHODS,
    gradcam,
    reference_activations,
)
from cxrlab.explain.reference import sign_free_rows  # the explain stage's reference films
from cxrlab.labels import IMAGE_INDEX
from cxrlab.models import (
    COARSE_CAM_SIDE,
    MIN_CAM_SIDE,
    list_layers,
    stage_sides,
    target_layer_name,
    target_layer_names,
)
from cxrlab.models.checkpoint import load_trained
from cxrlab.models.inference import to_model_input


@dataclass
class Pairs:
    rows: np.ndarray  # (N,) cache rows
    ks: np.ndarray  # (N,) class indices
    boxes_px: list[np.ndarray]  # N arrays (M, 4) in cache pixels
    ids: list[str]


def boxed_pairs(data, split: str) -> Pairs:
    """Every (row, class) of `split` positive for the class and holding a box of it."""
    frame = pd.read_csv(data.paths.boxes, dtype={IMAGE_INDEX: str})
    boxes = {
        key: loc.boxes_in_pixels(part, data.image_size)
        for key, part in frame.groupby([IMAGE_INDEX, "label"], sort=False)
    }
    ids = list(data.cache.ids)
    out = Pairs([], [], [], [])
    for k, target in enumerate(data.targets):
        for row in data.rows(split):
            key = (ids[row], target)
            if data.labels[row, k] == 1 and key in boxes:
                out.rows.append(int(row)), out.ks.append(k), out.boxes_px.append(boxes[key])
                out.ids.append(ids[row])
    out.rows, out.ks = np.array(out.rows, dtype=np.int64), np.array(out.ks, dtype=np.int64)
    return out


def candidate_layers(model, size: int) -> dict[str, str]:
    """kind -> layer option ('+' fuses), in the order the table shows them; a layer option
    already shown under an earlier kind is not repeated."""
    stages = list_layers(model)[:-1]
    fine = target_layer_name(model, size, min_side=MIN_CAM_SIDE)
    coarse = target_layer_name(model, size, min_side=COARSE_CAM_SIDE)
    finer = stages[max(0, stages.index(fine) - 1)] if fine in stages else stages[-2]
    kinds = (
        ("auto", "+".join(target_layer_names(model, size))),
        ("14x14", fine),
        ("7x7", coarse),
        ("deepest", target_layer_name(model)),
        ("finer", finer),
    )
    out: dict[str, str] = {}
    for kind, layer in kinds:
        if layer not in out.values():
            out[kind] = layer
    return out


def side_of(model, layer: str, size: int) -> str:
    sides = stage_sides(model, size)
    deepest = list_layers(model)[-2]
    parts = [sides.get(name, sides[deepest]) for name in layer.split("+")]
    return "+".join(f"{s}x{s}" for s in parts)


def score(data, pairs: Pairs, maps: np.ndarray) -> list[loc.PairScore]:
    return [
        loc.score_pair(pairs.ids[i], data.targets[pairs.ks[i]], maps[i], pairs.boxes_px[i])
        for i in range(len(maps))
    ]


def faithfulness_subset(ks: np.ndarray, per_finding: int) -> np.ndarray:
    """Indices of the first `per_finding` pairs of each class: the curves cost 2*steps
    forward images per pair, so they are read on a fixed subsample (the same for every
    configuration of a model)."""
    return np.concatenate([np.flatnonzero(ks == k)[:per_finding] for k in np.unique(ks)])


def configurations(model, size: int):
    """(kind, layer option, method, reference?) in the order the table shows them."""
    for kind, layer in candidate_layers(model, size).items():
        for method in CAM_METHODS:
            yield kind, layer, method, False
            if method in REFERENCE_METHODS:
                yield kind, layer, method, True


def hit_cells(summary: dict, findings: list[str]) -> dict:
    """Hit rate per finding and how many meet the issue's target."""
    row = {"met": 0}
    for t in findings:
        s = summary[t]
        ok = s["hit_rate"] >= 2 * s["random_point_hit_rate"] and (
            s["centre_point_hit_rate"] >= 0.5 or s["hit_rate"] > s["centre_point_hit_rate"]
        )
        row[t], row["met"] = s["hit_rate"], row["met"] + int(ok)
    return row


def bench_model(run_dir: str, name: str, args) -> list[dict]:
    data = load_run_data(run_dir)
    trained = load_trained(data, name, "cpu")
    model, mean, std = trained.model, trained.info["mean"], trained.info["std"]
    pairs = boxed_pairs(data, args.split)
    images = np.asarray(data.images[pairs.rows])  # (N, S, S) uint8
    counts = {t: int((pairs.ks == k).sum()) for k, t in enumerate(data.targets)}
    findings = [t for t in data.targets if counts[t] >= args.min_boxes]
    size = data.image_size
    sub = faithfulness_subset(pairs.ks, args.faith_pairs)

    def curves(maps: np.ndarray) -> fa.Curves:
        return fa.deletion_insertion(
            model, images[sub], pairs.ks[sub], maps[sub], mean=mean, std=std, steps=args.steps
        )

    rows = []
    sides = stage_sides(model, size)
    grids = sorted({sides[n] for n in target_layer_names(model, size) if n in sides}, reverse=True)
    for cells in (None, *grids):  # per pixel, then as coarse as each default layer's map
        chance = curves(fa.random_ranking(images.shape, cells=cells))
        rows.append(
            {
                "model": name,
                "method": "random ranking, "
                + ("per pixel" if cells is None else f"{cells}x{cells} grid"),
                "kind": "reference",
                "layer": "-",
                "side": "-",
                "deletion": float(chance.deletion_auc.mean()),
                "insertion": float(chance.insertion_auc.mean()),
            }
        )
    normal = np.asarray(data.images[sign_free_rows(data)])
    references: dict[str, list[np.ndarray]] = {}
    for kind, layer, method, use_ref in configurations(model, size):
        modules = [model.get_submodule(n) for n in layer.split("+")]
        if use_ref and layer not in references:
            references[layer] = reference_activations(model, normal, modules, mean=mean, std=std)
        reference = references[layer] if use_ref else None
        start = time.perf_counter()
        cams = gradcam(
            model,
            images,
            pairs.ks,
            mean=mean,
            std=std,
            layer=modules,
            method=method,
            reference=reference,
        )
        seconds = time.perf_counter() - start
        summary = loc.summarize(score(data, pairs, cams.maps), data.targets)
        label = f"{method}+ref" if use_ref else method
        row = {
            "model": name,
            "method": label,
            "kind": kind,
            "layer": layer,
            "side": side_of(model, layer, size),
            "ms_per_pair": 1000 * seconds / len(pairs.rows),
            "mean_iou": float(np.mean([summary[t]["mean_iou"] for t in findings])),
            **hit_cells(summary, findings),
        }
        if kind in ("auto", "7x7"):
            c = curves(cams.maps)
            row["deletion"] = float(c.deletion_auc.mean())
            row["insertion"] = float(c.insertion_auc.mean())
        rows.append(row)
        print(
            f"  {name:20s} {label:13s} {kind:8s} {layer:22s} met {row['met']}/"
            f"{len(findings)}  CAM {seconds:.1f} s",
            flush=True,
        )
    base = {"model": name, "kind": "baseline", "layer": "-", "side": "-"}
    rows.append(
        {
            **base,
            "method": "random point",
            **{t: summary[t]["random_point_hit_rate"] for t in findings},
            "mean_iou": None,
        }
    )
    rows.append(
        {
            **base,
            "method": "centre point",
            **{t: summary[t]["centre_point_hit_rate"] for t in findings},
            "mean_iou": float(np.mean([summary[t]["centre_map_iou"] for t in findings])),
        }
    )
    for r in rows:
        r["findings"] = {t: counts[t] for t in findings}
        r["faith_pairs"] = len(sub)
    return rows


@dataclass
class Films:
    """Films of one finding drawn with its sign alone and without it (same patient, shot)."""

    signed: np.ndarray  # (N, S, S) uint8, cache size
    clear: np.ndarray  # (N, S, S) uint8
    boxes_px: list[np.ndarray]  # N arrays (1, 4) in cache pixels


def draw_films(finding: str, n: int, film_size: int, size: int, seed: int = 1000) -> Films:
    """`n` films holding one `finding` sign: patients, shots and signs drawn by the generator's
    own samplers (AP one film in three, about the generator's mean rate; no sickness factor)."""
    from cxrlab.data.imaging import resize_square
    from cxrlab.synth.parameters import sample_anatomy, sample_shot
    from cxrlab.synth.render import render_chest
    from cxrlab.synth.signs import sample_sign

    out = Films([], [], [])
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        anatomy = sample_anatomy(rng, female=bool(rng.random() < 0.44))
        shot = sample_shot(rng, "AP" if rng.random() < 0.35 else "PA")
        signed, boxes = render_chest(anatomy, shot, [sample_sign(finding, rng)], film_size)
        if not boxes:  # the sign came out invisible
            continue
        clear, _ = render_chest(anatomy, shot, [], film_size)
        out.signed.append(resize_square(signed, size)), out.clear.append(resize_square(clear, size))
        b = boxes[0]
        out.boxes_px.append(np.array([[b.x0, b.y0, b.x1, b.y1]]) * size)
    out.signed, out.clear = np.stack(out.signed), np.stack(out.clear)
    return out


def logits_of(model, images: np.ndarray, k: int, mean, std) -> np.ndarray:
    with torch.no_grad():
        return model(to_model_input(images, mean, std))[:, k].numpy()  # (N,)


def bench_films(run_dir: str, name: str, args) -> list[dict]:
    """Pointing game of every configuration on one-sign films (see the module docstring)."""
    data = load_run_data(run_dir)
    trained = load_trained(data, name, "cpu")
    model, mean, std = trained.model, trained.info["mean"], trained.info["std"]
    size, targets = data.image_size, list(data.targets)
    films = {t: draw_films(t, args.films, args.film_size, size) for t in targets}
    base = {"model": name, "layer": "-", "side": "-", "findings": {}}
    detects = {"method": "detects the sign", "kind": "baseline", **base}
    for k, t in enumerate(targets):
        f = films[t]
        detects[t] = float(
            np.mean(
                logits_of(model, f.signed, k, mean, std) > logits_of(model, f.clear, k, mean, std)
            )
        )
        base["findings"][t] = len(f.signed)
    normal = np.asarray(data.images[sign_free_rows(data)])
    rows, references = [], {}
    for kind, layer, method, use_ref in configurations(model, size):
        modules = [model.get_submodule(n) for n in layer.split("+")]
        if use_ref and layer not in references:
            references[layer] = reference_activations(model, normal, modules, mean=mean, std=std)
        scores = []
        for k, t in enumerate(targets):
            f = films[t]
            maps = gradcam(
                model,
                f.signed,
                [k] * len(f.signed),
                mean=mean,
                std=std,
                layer=modules,
                method=method,
                reference=references[layer] if use_ref else None,
            ).maps
            scores += [
                loc.score_pair(str(i), t, m, b)
                for i, (m, b) in enumerate(zip(maps, f.boxes_px, strict=True))
            ]
        summary = loc.summarize(scores, targets)
        label = f"{method}+ref" if use_ref else method
        rows.append(
            {
                **base,
                "method": label,
                "kind": kind,
                "layer": layer,
                "side": side_of(model, layer, size),
                "mean_iou": float(np.mean([summary[t]["mean_iou"] for t in targets])),
                **hit_cells(summary, targets),
            }
        )
        print(
            f"  films {name:20s} {label:13s} {kind:8s} met {rows[-1]['met']}/{len(targets)}",
            flush=True,
        )
    rows.append(
        {
            **base,
            "method": "random point",
            "kind": "baseline",
            **{t: summary[t]["random_point_hit_rate"] for t in targets},
        }
    )
    rows.append(
        {
            **base,
            "method": "centre point",
            "kind": "baseline",
            **{t: summary[t]["centre_point_hit_rate"] for t in targets},
        }
    )
    return [*rows, detects]


def markdown(rows: list[dict]) -> str:
    findings = list(rows[0]["findings"])
    head = [
        "model",
        "method",
        "layer (map)",
        *(f"{t[:5]} n={rows[0]['findings'][t]}" for t in findings),
        "met",
        "IoU",
        "del AUC ↓",
        "ins AUC ↑",
        "ms/pair",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, fmt=".3f"):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    for r in rows:
        cells = [
            r["model"],
            r["method"],
            f"{r['kind']}: {r['layer']} ({r['side']})"
            if r["kind"] not in ("baseline", "reference")
            else r["kind"],
        ]
        cells += [f(r.get(t)) for t in findings]
        met = f"{r['met']}/{len(findings)}" if "met" in r else "-"
        cells += [
            met,
            f(r.get("mean_iou")),
            f(r.get("deletion")),
            f(r.get("insertion")),
            f(r.get("ms_per_pair"), ".1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--models", default=None, help="comma-separated; default: every one")
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, default=fa.DEFAULT_STEPS)
    parser.add_argument("--min-boxes", type=int, default=10)
    parser.add_argument("--faith-pairs", type=int, default=8, help="curve pairs per finding")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared cores)")
    parser.add_argument("--csv", default=None, help="also write every row to this CSV")
    parser.add_argument("--films", type=int, default=0, help="one-sign films per finding (0: none)")
    parser.add_argument("--film-size", type=int, default=256, help="side the films are drawn at")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_run_data(args.run_dir)
    names = args.models.split(",") if args.models else data.paths.trained_models()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for name in names:
        rows += bench_model(args.run_dir, name, args)
    print(markdown(rows))
    if args.csv:
        pd.DataFrame(rows).drop(columns="findings").to_csv(args.csv, index=False)
    print(
        f"deletion/insertion: {rows[0]['faith_pairs']} pairs per model ({args.faith_pairs} "
        f"per finding), {args.steps} steps, at the auto and 7x7 layers"
    )
    if args.films:
        film_rows = [row for name in names for row in bench_films(args.run_dir, name, args)]
        print(f"one-sign films, {args.films} drawn per finding at {args.film_size} px:")
        print(markdown(film_rows))


if __name__ == "__main__":
    main()
