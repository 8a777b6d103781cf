"""Small rich helpers shared by the commands."""

from __future__ import annotations

from rich.table import Table


def frame_table(frame, title: str) -> Table:
    """A pandas DataFrame as a rich Table (index first)."""
    table = Table(title=title)
    table.add_column(str(frame.index.name or ""))
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for index, row in frame.iterrows():
        table.add_row(str(index), *[_cell(v) for v in row.tolist()])
    return table


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:g}"
    return str(value)
