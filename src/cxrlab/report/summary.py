"""The report's verdicts: which model is best for which pathology, and how sure we are.

Written by hand because the judgement is this project's own: per class (and macro) the model
with the highest AUROC point estimate, its 95% CI, the runner-up, and the paired comparison
between the two from `cxrlab compare`. Every verdict has three outcomes, decided by the CI of
the *difference* from the paired bootstrap over patients: better, worse, or not shown.
Per-class verdicts are Holm-adjusted across the classes of the pair (adjusted p < `ALPHA`);
the macro row is one test, read off its 95% CI. DeLong's p is shown beside, labelled with the
assumption it makes (independent images), and decides nothing; overlapping CIs decide nothing
either. The all-negative comparison works the same way: model minus "predict nothing", with
the patient-bootstrap CI of that difference.
"""

from __future__ import annotations

from collections.abc import Mapping

from cxrlab.evaluate.bootstrap import ALPHA
from cxrlab.evaluate.tables import format_p

CHANCE = 0.5  # AUROC of guessing
MACRO = "macro"
DELONG_ASSUMPTION = "assumes independent images"

__all__ = ["ALPHA", "best_rows", "baseline_rows", "headline", "verdict"]


def fmt_p(p: float | None, at_floor: bool = False, n_boot: int | None = None) -> str:
    return format_p(p, at_floor, n_boot)


def p_is(p: float | None, at_floor: bool = False, n_boot: int | None = None) -> str:
    """`p = 0.123`, `p <0.001`, or `p < 0.001 (floor 2/(B+1))`."""
    text = fmt_p(p, at_floor, n_boot)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def fmt_ci(entry: Mapping | None, digits: int = 3) -> str:
    """`0.812 [0.790, 0.834]` from `{"estimate", "low", "high"}`; `undefined` for None."""
    if not entry or entry.get("estimate") is None:
        return "undefined"
    text = f"{entry['estimate']:.{digits}f}"
    if entry.get("low") is None or entry.get("high") is None:
        return text
    if entry["low"] == entry["high"]:
        return f"{text} (no interval: every resample gave {entry['low']:.{digits}f})"
    return f"{text} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def auroc_by_model(metrics: Mapping[str, Mapping], targets: list[str]) -> dict[str, dict]:
    """`{model: {target|macro: {"estimate", "low", "high", ...}}}` from each metrics.json."""
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
    """ΔAUROC (best − runner-up) with CI, p-values and the verdict for one class or macro."""
    boot = pair["paired_bootstrap"]
    entry = boot[MACRO] if key == MACRO else boot["per_class"].get(key, {})
    delta, low, high = entry.get("delta"), entry.get("low"), entry.get("high")
    outcome = entry.get("verdict")
    if flipped and delta is not None:
        delta, low, high = (
            -delta,
            (None if high is None else -high),
            (None if low is None else -low),
        )
        outcome = {"better": "worse", "worse": "better"}.get(outcome, outcome)
    delong = None if key == MACRO else (pair.get("delong") or {}).get(key, {}).get("p_value")
    return {
        "delta": delta,
        "low": low,
        "high": high,
        "verdict": outcome,
        "p_boot": entry.get("p_value"),
        "p_holm": entry.get("p_holm"),
        "p_at_floor": bool(entry.get("p_at_floor")),
        "n_boot": boot.get("n_boot"),
        "unstable": entry.get("unstable"),
        "macro": key == MACRO,
        "p_delong": delong,
    }


def _difference(paired: Mapping) -> str:
    if paired["delta"] is None or paired["low"] is None:
        return "ΔAUROC undefined"
    return f"ΔAUROC {paired['delta']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}]"


def evidence(paired: Mapping) -> str:
    """What a verdict rests on: the CI of the difference and the (Holm-adjusted) p."""
    p_boot = p_is(paired["p_boot"], paired["p_at_floor"], paired["n_boot"])
    if paired["macro"]:
        rests = f"{_difference(paired)}; bootstrap {p_boot}, one test"
    elif paired.get("p_holm") is None:  # a comparison written before Holm was applied
        rests = f"{_difference(paired)}; bootstrap {p_boot}, not adjusted"
    else:
        rests = f"{_difference(paired)}; Holm-adjusted {p_is(paired['p_holm'])} (raw {p_boot})"
    if paired.get("unstable"):
        rests += f"; {paired['unstable']}"
    if paired["p_delong"] is not None:
        rests += f"; DeLong {p_is(paired['p_delong'])}, {DELONG_ASSUMPTION}"
    return rests


def verdict(best: str, runner: str | None, paired: dict | None, overlap: bool | None) -> tuple:
    """(kind, words): kind is `better`, `worse`, `notshown`, `untested`, or `single`."""
    if runner is None:
        return "single", "only model with a defined AUROC: nothing to compare"
    if paired is None:
        ci_words = "95% CIs overlap" if overlap else "95% CIs do not overlap"
        return "untested", f"{ci_words} with {runner}; no paired test (run `cxrlab compare`)"
    outcome = paired.get("verdict")
    if outcome is None:
        return "untested", f"paired test undefined (or from an older `cxrlab compare`) for {runner}"
    if outcome in ("better", "worse"):
        return outcome, f"{outcome} than {runner} ({evidence(paired)})"
    return "notshown", f"no difference from {runner} shown ({evidence(paired)})"


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
           "unstable": None,
           "words": "AUROC undefined for every model (no positives or no negatives)"}  # fmt: skip
    if not scored:
        return row
    best = scored[0][1]
    runner = scored[1][1] if len(scored) > 1 else None
    row.update(model=best, auroc=table[best][key], unstable=table[best][key].get("unstable"))
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
    """Per model: Hamming and exact-match accuracy beside the all-negative predictor's, the
    patient-bootstrap CI of the difference, and its verdict (better / worse / not shown)."""
    rows = []
    for name, block in metrics.items():
        ml = block["result"]["metrics"]["multilabel"]
        gains = (block["result"].get("ci") or {}).get("vs_all_negative") or {}
        base = ml["all_negative"]
        row = {"model": name, "n_images": ml.get("n_images"), "n_labels": ml.get("n_labels")}
        for key in ("hamming_accuracy", "exact_match"):
            gain = gains.get(key) or {}
            row[key] = ml[key]
            row[f"{key}_baseline"] = base[key]
            row[f"{key}_gain"] = {
                "estimate": ml[key] - base[key],
                "low": gain.get("low"),
                "high": gain.get("high"),
            }
            row[f"{key}_verdict"] = gain.get("verdict") or "untested (re-run `cxrlab evaluate`)"
        rows.append(row)
    return rows


def headline(rows: list[dict]) -> str | None:
    """One sentence on the macro winner, e.g. for the top of the report."""
    macro = next((r for r in rows if r["target"] == MACRO), None)
    if macro is None or macro["model"] is None:
        return None
    return f"Best macro AUROC: {macro['model']}, {fmt_ci(macro['auroc'])}; {macro['words']}."
