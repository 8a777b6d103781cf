"""The report's verdicts: which model is best for which pathology, and how sure we are.

Written by hand because the judgement is this project's own: per class (and macro) the model
with the highest AUROC point estimate, its 95% CI, the runner-up, and the paired comparison
between the two from `cxrlab compare` (paired bootstrap over patients; DeLong per class).
A difference counts as significant only when every available paired test has p < `ALPHA`;
overlapping CIs alone decide nothing (paired tests are more powerful), so both are shown.
p-values are not adjusted for the number of classes and pairs; the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping

ALPHA = 0.05
CHANCE = 0.5  # AUROC of guessing
MACRO = "macro"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_is(p: float | None) -> str:
    """`p = 0.123` or `p < 0.001`."""
    text = fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def fmt_ci(entry: Mapping | None, digits: int = 3) -> str:
    """`0.812 [0.790, 0.834]` from `{"estimate", "low", "high"}`; `undefined` for None."""
    if not entry or entry.get("estimate") is None:
        return "undefined"
    text = f"{entry['estimate']:.{digits}f}"
    if entry.get("low") is None or entry.get("high") is None:
        return text
    return f"{text} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def auroc_by_model(metrics: Mapping[str, Mapping], targets: list[str]) -> dict[str, dict]:
    """`{model: {target|macro: {"estimate", "low", "high"}}}` from each metrics.json's CIs."""
    out = {}
    for name, block in metrics.items():
        ci = block["result"]["ci"]
        row = {t: dict(ci["per_class"].get(t, {}).get("auroc") or {}) for t in targets}
        row[MACRO] = dict(ci["macro"].get("auroc") or {})
        out[name] = row
    return out


def find_pair(pairs: Mapping[str, Mapping], a: str, b: str) -> tuple[Mapping, bool] | None:
    """The comparison of models a and b, and whether it is stored the other way round."""
    for pair in pairs.values():
        if (pair["a"], pair["b"]) == (a, b):
            return pair, False
        if (pair["a"], pair["b"]) == (b, a):
            return pair, True
    return None


def paired_result(pair: Mapping, flipped: bool, key: str) -> dict:
    """ΔAUROC (best − runner-up) with CI and both p-values for one class or macro."""
    boot = pair["paired_bootstrap"]
    entry = boot[MACRO] if key == MACRO else boot["per_class"].get(key, {})
    delta, low, high = entry.get("delta"), entry.get("low"), entry.get("high")
    if flipped and delta is not None:
        delta, low, high = (
            -delta,
            (None if high is None else -high),
            (None if low is None else -low),
        )
    delong = None if key == MACRO else (pair.get("delong") or {}).get(key, {}).get("p_value")
    return {"delta": delta, "low": low, "high": high,
            "p_boot": entry.get("p_value"), "p_delong": delong}  # fmt: skip


def verdict(best: str, runner: str | None, paired: dict | None, overlap: bool | None) -> tuple:
    """(kind, words): kind is `better`, `tie`, `borderline`, `untested`, or `single`."""
    if runner is None:
        return "single", "only model with a defined AUROC: nothing to compare"
    if paired is None:
        ci_words = "95% CIs overlap" if overlap else "95% CIs do not overlap"
        return "untested", f"{ci_words} with {runner}; no paired test (run `cxrlab compare`)"
    ps = [p for p in (paired["p_boot"], paired["p_delong"]) if p is not None]
    tests = f"paired bootstrap {p_is(paired['p_boot'])}"
    if paired["p_delong"] is not None:
        tests += f", DeLong {p_is(paired['p_delong'])}"
    if not ps:
        return "untested", f"paired test undefined for {runner}"
    if all(p < ALPHA for p in ps):
        return "better", f"better than {runner} ({tests})"
    if any(p < ALPHA for p in ps):
        return "borderline", f"borderline against {runner}: the tests disagree ({tests})"
    return "tie", f"not distinguishable from {runner} ({tests}); treat as a tie"


def best_rows(
    metrics: Mapping[str, Mapping], targets: list[str], comparison: Mapping | None
) -> list[dict]:
    """One row per target and macro: best model, CI, runner-up, ΔAUROC, p-values, verdict."""
    table = auroc_by_model(metrics, targets)
    pairs = (comparison or {}).get("pairs", {})
    rows = []
    for key in [*targets, MACRO]:
        scored = sorted(
            ((row[key]["estimate"], name) for name, row in table.items()
             if row[key].get("estimate") is not None),
            key=lambda s: (-s[0], s[1]),
        )  # fmt: skip
        rows.append(_row(key, scored, table, pairs))
    return rows


def _row(key: str, scored: list, table: dict, pairs: Mapping) -> dict:
    row = {"target": key, "model": None, "auroc": None, "runner_up": None, "runner_auroc": None,
           "paired": None, "overlap": None, "kind": "undefined", "chance": False,
           "words": "AUROC undefined for every model (no positives or no negatives)"}  # fmt: skip
    if not scored:
        return row
    best = scored[0][1]
    runner = scored[1][1] if len(scored) > 1 else None
    row.update(model=best, auroc=table[best][key])
    if runner is not None:
        row.update(runner_up=runner, runner_auroc=table[runner][key])
        row["overlap"] = _overlap(table[best][key], table[runner][key])
        found = find_pair(pairs, best, runner)
        row["paired"] = paired_result(found[0], found[1], key) if found else None
    row["kind"], row["words"] = verdict(best, runner, row["paired"], row["overlap"])
    low = table[best][key].get("low")
    row["chance"] = low is not None and low <= CHANCE  # no evidence it beats guessing
    return row


def _overlap(a: Mapping, b: Mapping) -> bool | None:
    if None in (a.get("low"), a.get("high"), b.get("low"), b.get("high")):
        return None
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def baseline_rows(metrics: Mapping[str, Mapping]) -> list[dict]:
    """Per model: Hamming and exact-match accuracy beside the all-negative predictor's."""
    rows = []
    for name, block in metrics.items():
        ml = block["result"]["metrics"]["multilabel"]
        base = ml["all_negative"]
        row = {"model": name, "n_images": ml.get("n_images"), "n_labels": ml.get("n_labels")}
        for key in ("hamming_accuracy", "exact_match"):
            row[key] = ml[key]
            row[f"{key}_baseline"] = base[key]
            row[f"{key}_beats"] = ml[key] > base[key] + 1e-12
        rows.append(row)
    return rows


def headline(rows: list[dict]) -> str | None:
    """One sentence on the macro winner, e.g. for the top of the report."""
    macro = next((r for r in rows if r["target"] == MACRO), None)
    if macro is None or macro["model"] is None:
        return None
    return f"Best macro AUROC: {macro['model']}, {fmt_ci(macro['auroc'])}; {macro['words']}."
