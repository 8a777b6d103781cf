"""Metrics dicts -> display tables (pandas), saved as CSV and Markdown.

Cells are formatted strings for people (`0.812 [0.790, 0.834]`, `undefined (no positives)`);
the numbers themselves stay in `metrics.json`. Markdown is written here by hand because
`DataFrame.to_markdown` needs `tabulate`, which cxrlab does not depend on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

UNDEFINED = "undefined"
#: DeLong's variance treats every image as independent; with several images per patient it
#: is too small (on the demo its SEs were 1-17% below the patient-bootstrap SDs).
DELONG_COLUMN = "DeLong p (assumes independent images)"


def format_value(value, digits: int = 3, reason: str | None = None) -> str:
    """A number with `digits` decimals, or `undefined (reason)` for None."""
    if value is None:
        return f"{UNDEFINED} ({_short(reason)})" if reason else UNDEFINED
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def format_ci(estimate, low=None, high=None, digits: int = 3, reason: str | None = None) -> str:
    """`0.812 [0.790, 0.834]`; the estimate alone when there is no interval."""
    text = format_value(estimate, digits, reason)
    if estimate is None or low is None or high is None:
        return text
    if low == high:  # every resample gave the same value: no interval, not certainty
        return f"{text} (no interval: every resample gave {low:.{digits}f})"
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def format_p(p: float | None, at_floor: bool = False, n_boot: int | None = None) -> str:
    """`0.047`, `<0.001`, or for a bootstrap p at its floor 2/(B+1) (no resample on the
    other side of 0) `< 0.001 (floor 2/(B+1))`: the true p is smaller than B can show."""
    if p is None:
        return "—"
    if at_floor and n_boot:
        return f"< {2 / (n_boot + 1):.2g} (floor 2/(B+1))"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def with_note(text: str, note: str | None) -> str:
    """`text (note)`, e.g. an estimate with its `unstable: n+ = 6 < 10` mark."""
    return f"{text} ({note})" if note else text


def _short(reason: str | None) -> str:
    return (reason or "").replace(" in this split", "").replace(" at this threshold", "")


def _cell(entry: Mapping, metric: str, ci: Mapping | None, digits: int) -> str:
    """One metric of a per-class (or macro/micro) block, with its CI when available."""
    reason = entry.get("undefined", {}).get(metric)
    interval = (ci or {}).get(metric) or {}
    text = format_ci(entry.get(metric), interval.get("low"), interval.get("high"), digits, reason)
    return with_note(text, None if entry.get(metric) is None else interval.get("unstable"))


_PER_CLASS_COLUMNS = (
    ("auroc", "AUROC"),
    ("ap", "AP"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("precision", "precision"),
    ("f1", "F1"),
)


def per_class_table(metrics: Mapping, ci: Mapping | None = None, digits: int = 3) -> pd.DataFrame:
    """One row per class, then macro and micro; CIs from `bootstrap_ci` when given."""
    rows = []
    for name, entry in metrics["per_class"].items():
        boot = (ci or {}).get("per_class", {}).get(name)
        row = {"class": name, "n_pos": entry["n_pos"], "prevalence": f"{entry['prevalence']:.3f}"}
        row.update({label: _cell(entry, key, boot, digits) for key, label in _PER_CLASS_COLUMNS})
        row["AP baseline"] = f"{entry['ap_baseline']:.3f}"
        row["threshold"] = f"{entry['threshold']:.3f}"
        row.update({c.upper(): entry[c] for c in ("tp", "fp", "tn", "fn")})
        rows.append(row)
    for block in ("macro", "micro"):
        entry = dict(metrics[block])
        if block == "macro":  # macro's undefined = every class undefined; show the exclusions
            entry["undefined"] = {m: "no class defined" for m, v in entry.items() if v is None}
        row = {"class": block}
        row.update(
            {
                label: _cell(entry, key, (ci or {}).get(block), digits)
                for key, label in _PER_CLASS_COLUMNS
                if key in entry
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, dtype=object).set_index("class").fillna("")


def multilabel_table(metrics: Mapping, ci: Mapping | None = None, digits: int = 3) -> pd.DataFrame:
    """Hamming accuracy and exact match beside the all-negative predictor's on the same data."""
    ml = metrics["multilabel"]
    rows = []
    for key, label in (("hamming_accuracy", "Hamming accuracy"), ("exact_match", "exact match")):
        interval = (ci or {}).get("multilabel", {}).get(key) or {}
        gain = (ci or {}).get("vs_all_negative", {}).get(key) or {}
        ours, base = ml[key], ml["all_negative"][key]
        rows.append(
            {
                "metric": label,
                "model": format_ci(ours, interval.get("low"), interval.get("high"), digits),
                "all-negative predictor": format_value(base, digits),
                "model - all-negative [95% CI]": format_ci(
                    ours - base, gain.get("low"), gain.get("high"), digits
                ).replace(f"{ours - base:.{digits}f}", f"{ours - base:+.{digits}f}", 1),
                "beats it?": gain.get("verdict") or "untested (no CI)",
                "model at 0.5": format_value(ml.get("at_0.5", {}).get(key), digits),
            }
        )
    return pd.DataFrame(rows).set_index("metric")


def threshold_table(metrics: Mapping, digits: int = 3) -> pd.DataFrame:
    """Per class: sensitivity, specificity and F1 at the chosen threshold and at 0.5."""
    rows = []
    for name, entry in metrics["per_class"].items():
        at_half = entry["at_0.5"]
        row = {"class": name, "threshold": f"{entry['threshold']:.3f}"}
        for key in ("sensitivity", "specificity", "f1"):
            row[key] = _cell(entry, key, None, digits)
            row[f"{key} at 0.5"] = _cell(at_half, key, None, digits)
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def paired_table(paired: Mapping, digits: int = 3) -> pd.DataFrame:
    """`paired_bootstrap` output per class and macro: AUROC of A and B, ΔAUROC [CI], the
    bootstrap p, its Holm adjustment across classes, and the verdict (A better / A worse /
    not shown) those decide."""
    n_boot = paired.get("n_boot")
    rows = []
    for name, entry in [*paired["per_class"].items(), ("macro", paired["macro"])]:
        delta = format_ci(entry["delta"], entry["low"], entry["high"], digits)
        rows.append(
            {
                "class": name,
                "AUROC A": format_value(entry["auroc_a"], digits),
                "AUROC B": format_value(entry["auroc_b"], digits),
                "ΔAUROC (A - B)": with_note(
                    delta, entry.get("unstable") if entry["delta"] is not None else None
                ),
                "p": format_p(entry["p_value"], entry.get("p_at_floor", False), n_boot),
                "p (Holm)": "— (one test)" if name == "macro" else format_p(entry.get("p_holm")),
                "verdict": _pair_verdict(entry.get("verdict")),
            }
        )
    return pd.DataFrame(rows).set_index("class")


def _pair_verdict(verdict: str | None) -> str:
    return {"better": "A better", "worse": "B better"}.get(verdict, verdict or "—")


def subgroup_table(subgroups: Mapping, digits: int = 3) -> pd.DataFrame:
    """`subgroup_auroc` output: one row per (grouping, level), AUROC [CI] (n_pos) per class."""
    rows = []
    for grouping, levels in subgroups["groupings"].items():
        for level, block in levels.items():
            row = {
                "grouping": grouping,
                "level": level,
                "images": block["n_images"],
                "patients": block["n_patients"],
            }
            for name, entry in block["per_class"].items():
                cell = format_ci(
                    entry["auroc"], entry["low"], entry["high"], digits, entry.get("undefined")
                )
                note = entry.get("unstable") if entry["auroc"] is not None else None
                row[name] = with_note(f"{cell} (n+={entry['n_pos']})", note)
            macro = block["macro"]
            row["macro"] = format_ci(macro["auroc"], macro["low"], macro["high"], digits)
            row["macro averages"] = _macro_classes(macro)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["grouping", "level"])


def _macro_classes(macro: Mapping) -> str:
    """Which classes a subgroup macro averages, and which it leaves out (the same for every
    level of a grouping, so the levels are comparable)."""
    classes = macro.get("classes")
    if classes is None:
        return "—"
    if not classes:
        return "not compared (no class with positives and negatives in this level)"
    text = ", ".join(classes)
    left_out = macro.get("left_out") or []
    return f"{text} (left out: {', '.join(left_out)})" if left_out else text


def to_markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    frame = frame.reset_index() if index else frame
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _md(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def save_table(frame: pd.DataFrame, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.csv` and `<stem>.md`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    frame.to_csv(csv_path)
    md_path.write_text(to_markdown(frame))
    return csv_path, md_path
