"""`cxrlab explain RUN_DIR --model NAME`: Grad-CAM overlays and localization scores.

cxrlab explain runs/nih4 --model resnet18                      # the test split's gallery
cxrlab explain runs/nih4 --model resnet18 --images 00000013_005.png,00000032_001.png
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrlab.cli.app import app, console
from cxrlab.cli.options import DEVICE_HELP, from_config
from cxrlab.config import CamMethod, Device, ExplainConfig, Split


@app.command("explain")
def explain_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option(..., "--model", help="Model folder under RUN_DIR/models."),
    images: str = typer.Option(
        None, help="Comma-separated Image Index values: explain just these, for every target."
    ),
    split: Split = from_config(ExplainConfig, "split", help="Split of the gallery and the scores."),
    per_group: int = from_config(
        ExplainConfig,
        "per_group",
        help="Gallery images per group (true/false positives, false negatives).",
    ),
    batch_size: int = from_config(
        ExplainConfig, "batch_size", help="Images per Grad-CAM forward/backward pass."
    ),
    tolerance: float = from_config(
        ExplainConfig, "tolerance", help="Pointing game: grow each box by this many pixels."
    ),
    cam_threshold: float = from_config(
        ExplainConfig, "cam_threshold", help="IoU: the map region >= this share of its peak."
    ),
    faithfulness: int = from_config(
        ExplainConfig,
        "faithfulness",
        help="True positives per target whose maps get deletion/insertion curves against "
        "random maps (0: none).",
    ),
    method: CamMethod = from_config(
        ExplainConfig, "method", help="CAM method (pytorch-grad-cam); see docs/benchmarks.md."
    ),
    layer: str = from_config(
        ExplainConfig,
        "layer",
        help="Layer to hook: auto (the deepest stages >= 14x14 and >= 7x7 at the run's size, "
        "fused), a module name, "
        "or names joined by + (fused).",
    ),
    reference: bool = from_config(
        ExplainConfig,
        "reference",
        "--reference/--no-reference",
        help="Map the change from a reference film (the mean over training images without "
        "any target finding) instead of from zero: the evidence this image adds. Kept in "
        "models/NAME/cam_reference.safetensors; only gradcam, hirescam and layercam take it.",
    ),
    device: Device = from_config(ExplainConfig, "device", help=DEVICE_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Grad-CAM per image and pathology, scored against the radiologists' boxes."""
    from cxrlab.config import section_from
    from cxrlab.explain.workflow import explain_model

    options = section_from(ExplainConfig, locals(), "explain options")
    result = explain_model(run_dir, model, options, images=images, progress=progress)
    console.print(localization_table(result))
    if result.get("faithfulness"):
        console.print(faithfulness_line(result["faithfulness"]), highlight=False)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(
        f"[green]{result['n_overlays']} overlays and the index files written to[/] "
        f"{result['out_dir']}"
    )


def localization_table(result: dict) -> Table:
    """Pointing game and IoU per pathology, with the chance baselines beside them."""
    where = "named images" if result["mode"] == "images" else f"{result['split']} split"
    cam = f"{result['method']} at {result['layer']}"
    table = Table(title=f"Localization of {cam} vs radiologists' boxes ({where})")
    for column in (
        "pathology",
        "n",
        "hit rate",
        "random point",
        "centre point",
        "mean IoU",
        "centre map IoU",
    ):
        table.add_column(column, justify="left" if column == "pathology" else "right")
    for name, s in result["localization"].items():
        table.add_row(
            name,
            str(s["n"]),
            *(
                _rate(s[key])
                for key in (
                    "hit_rate",
                    "random_point_hit_rate",
                    "centre_point_hit_rate",
                    "mean_iou",
                    "centre_map_iou",
                )
            ),
        )
    return table


def faithfulness_line(faith: dict) -> str:
    """One line: the maps' deletion and insertion over all targets, beside random maps."""
    from cxrlab.explain.faithfulness import ALL

    e = faith["per_pathology"][ALL]
    parts = []
    for curve in ("deletion", "insertion"):
        ci = e[f"{curve}_gain"]
        interval = "" if ci["low"] is None else f" [{ci['low']:.3f}, {ci['high']:.3f}]"
        parts.append(
            f"{curve} {e[curve]:.3f} vs random {e[f'{curve}_random']:.3f}, gain "
            f"{ci['estimate']:.3f}{interval} {e[f'{curve}_verdict'] or 'no interval'}"
        )
    return f"Faithfulness ({e['n']} true positives, {e['patients']} patients): " + "; ".join(parts)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
