"""The NIH ChestX-ray14 label vocabulary: one ordered list, in one place.

Labels are data. `Finding Labels` is parsed by splitting on `|`; a name that is not in the
vocabulary is an error, never a silent zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cxrlab.errors import ConfigError, DataError

#: The 14 findings, in the order of the NIH release (Wang et al., CVPR 2017).
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: Written alone when an image has none of the findings; never co-occurs with one.
NO_FINDING = "No Finding"

VOCABULARY: tuple[str, ...] = FINDINGS + (NO_FINDING,)

#: Spellings in BBox_List_2017.csv that differ from Data_Entry's.
BBOX_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}

#: The identifying columns of NIH's Data_Entry and of every cohort / predictions table.
IMAGE_INDEX = "Image Index"
PATIENT_ID = "Patient ID"

#: The reference study's four targets.
DEFAULT_TARGETS: tuple[str, ...] = ("Atelectasis", "Effusion", "Infiltration", "Pneumothorax")


def parse_finding_labels(text: str, *, where: str = "") -> list[str]:
    """Split one `Finding Labels` cell on `|` and check each name.

    >>> parse_finding_labels("Effusion|Infiltration")
    ['Effusion', 'Infiltration']
    >>> parse_finding_labels("No Finding")
    []
    """
    names = [part.strip() for part in str(text).split("|") if part.strip()]
    if not names:
        raise DataError(f"empty Finding Labels{_at(where)}; expected '{NO_FINDING}' or findings")
    for name in names:
        if name not in VOCABULARY:
            raise DataError(
                f"unknown label {name!r}{_at(where)}; valid labels: {', '.join(VOCABULARY)}"
            )
    if NO_FINDING in names:
        if len(names) > 1:
            raise DataError(f"'{NO_FINDING}' together with findings{_at(where)}: {text!r}")
        return []
    return names


def normalize_bbox_label(name: str, *, where: str = "") -> str:
    """Map a BBox_List label (e.g. `Infiltrate`) onto the Data_Entry vocabulary."""
    name = BBOX_ALIASES.get(name.strip(), name.strip())
    if name not in FINDINGS:
        raise DataError(f"unknown box label {name!r}{_at(where)}; valid: {', '.join(FINDINGS)}")
    return name


def parse_targets(targets: str | Sequence[str]) -> list[str]:
    """Resolve user-chosen target pathologies ("all", comma list or sequence), in input order.

    Accepts case-insensitive names and `Pleural Thickening` with a space.
    """
    if isinstance(targets, str):
        if targets.strip().lower() == "all":
            return list(FINDINGS)
        targets = [t for t in targets.split(",")]
    lookup = {f.lower().replace("_", " "): f for f in FINDINGS}
    lookup.update({alias.lower(): real for alias, real in BBOX_ALIASES.items()})
    resolved: list[str] = []
    for raw in targets:
        key = raw.strip().lower().replace("_", " ")
        if not key:
            continue
        if key not in lookup:
            raise ConfigError(
                f"unknown pathology {raw.strip()!r}; choose from: {', '.join(FINDINGS)} (or 'all')"
            )
        if lookup[key] in resolved:
            raise ConfigError(f"pathology {lookup[key]!r} is listed twice")
        resolved.append(lookup[key])
    if not resolved:
        raise ConfigError("no target pathology given; choose 1-14 from: " + ", ".join(FINDINGS))
    return resolved


def label_matrix(label_lists: Iterable[Sequence[str]], targets: Sequence[str]):
    """(N, K) uint8 matrix: row i has 1 in column k when targets[k] is in label_lists[i]."""
    import numpy as np

    index = {name: k for k, name in enumerate(targets)}
    rows = list(label_lists)
    out = np.zeros((len(rows), len(targets)), dtype=np.uint8)
    for i, names in enumerate(rows):
        for name in names:
            k = index.get(name)
            if k is not None:
                out[i, k] = 1
    return out


def _at(where: str) -> str:
    return f" at {where}" if where else ""
