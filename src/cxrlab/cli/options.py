"""CLI options read from the config sections, so each default, choice and bound is declared
once (in `cxrlab.config`) and an invalid value is refused by the parser, before any work.

    threshold: ThresholdRule = from_config(EvaluateConfig, "threshold", help="...")

The annotation (a `Literal` alias from `cxrlab.config`) gives the choices; `from_config`
takes the default and the numeric bounds from the pydantic field.
"""

from __future__ import annotations

from typing import Any

import annotated_types
import typer
from pydantic import BaseModel

DEVICE_HELP = "Where the model runs: auto (a GPU when there is one), cpu, cuda or mps."

#: Sentinel default of options that override a config file only when given.
NOT_GIVEN: Any = None


def field_default(section: type[BaseModel], name: str) -> Any:
    """The default of `section.name`, as a fresh value (lists are copied)."""
    field = section.model_fields[name]
    return field.get_default(call_default_factory=True)


def field_bounds(section: type[BaseModel], name: str) -> dict[str, float]:
    """typer's inclusive `min`/`max` from the field's ge/le (gt/lt are left to pydantic)."""
    bounds: dict[str, float] = {}
    for item in section.model_fields[name].metadata:
        if isinstance(item, annotated_types.Ge):
            bounds["min"] = item.ge
        elif isinstance(item, annotated_types.Le):
            bounds["max"] = item.le
    return bounds


def from_config(
    section: type[BaseModel],
    name: str,
    *flags: str,
    help: str,
    default: Any = ...,
    **kwargs: Any,
) -> Any:
    """A typer Option whose default and bounds are those of `section.name`.

    Pass `default=NOT_GIVEN` for an option that overrides a config file only when given;
    the bounds still apply.
    """
    value = field_default(section, name) if default is ... else default
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return typer.Option(value, *flags, help=help, **field_bounds(section, name), **kwargs)


def csv_list(value: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None or '' -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
