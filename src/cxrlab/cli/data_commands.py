"""`cxrlab synth` and `cxrlab prepare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrlab.cli.app import app, console
from cxrlab.cli.options import csv_list, from_config
from cxrlab.cli.render import frame_table
from cxrlab.config import DataConfig, Sampling, SplitMethod, SyntheticConfig
from cxrlab.labels import DEFAULT_TARGETS


@app.command("synth")
def synth_command(
    out: Path = typer.Argument(..., help="Folder to write the synthetic NIH-layout data set to."),
    patients: int = from_config(SyntheticConfig, "patients", help="Synthetic patients."),
    seed: int = from_config(
        SyntheticConfig, "seed", help="Random seed; the same seed gives the same bytes."
    ),
    image_size: int = from_config(SyntheticConfig, "image_size", help="PNG side in pixels."),
    workers: int = typer.Option(1, min=1, help="Processes drawing images."),
    overwrite: bool = typer.Option(False, help="Replace the contents of a non-empty OUT."),
) -> None:
    """Write a synthetic data set in the exact NIH layout (no download needed)."""
    from cxrlab.synth import write_synthetic_dataset

    info = write_synthetic_dataset(
        out,
        patients=patients,
        seed=seed,
        image_size=image_size,
        workers=workers,
        overwrite=overwrite,
    )
    counts = ", ".join(f"{k} {v}" for k, v in info.label_counts.items())
    console.print(
        f"[green]synthetic NIH data set written to[/] {out}: {info.images} images of "
        f"{info.patients} patients, {info.boxes} boxes; labels: {counts}"
    )


@app.command("prepare")
def prepare_command(
    data_root: Path = typer.Option(..., help="NIH ChestX-ray14 folder (NIH or Kaggle layout)."),
    out: Path = typer.Option(..., help="Run directory to create or update."),
    pathologies: str = typer.Option(
        ",".join(DEFAULT_TARGETS), help="Comma-separated targets (1-14 NIH findings) or 'all'."
    ),
    n_images: int = typer.Option(None, help="Cohort size in images (default: all)."),
    one_per_patient: bool = typer.Option(False, help="One image per chosen patient."),
    sampling: Sampling = from_config(
        DataConfig, "sampling", help="natural (data set prevalence) or enriched."
    ),
    min_positives: int = from_config(
        DataConfig, "min_positives", help="enriched: minimum positive images per target."
    ),
    views: str = typer.Option(None, help="Keep only these views, e.g. PA or PA,AP."),
    age_min: int = typer.Option(None, help="Minimum patient age (inclusive)."),
    age_max: int = typer.Option(None, help="Maximum patient age (inclusive)."),
    split: SplitMethod = from_config(
        DataConfig, "split", help="patient (stratified by patient) or official."
    ),
    val: float = from_config(DataConfig, "val", help="Share of patients for validation."),
    test: float = from_config(
        DataConfig, "test", help="Share of patients for test (split=patient)."
    ),
    image_size: int = from_config(DataConfig, "image_size", help="Cached square side in px."),
    drop_missing: bool = typer.Option(False, help="Drop listed images that are missing."),
    workers: int = from_config(DataConfig, "workers", help="Processes decoding images."),
    seed: int = from_config(DataConfig, "seed", help="Seed for cohort selection and split."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace OUT's data even though its trained models were trained on other data.",
    ),
) -> None:
    """Select a cohort, split it by patient and build the image cache in OUT/data."""
    from cxrlab.config import build
    from cxrlab.data.prepare import prepare

    options = build(
        DataConfig,
        {
            "data_root": str(data_root),
            "pathologies": pathologies,
            "n_images": n_images,
            "one_per_patient": one_per_patient,
            "sampling": sampling,
            "min_positives": min_positives,
            "views": csv_list(views),
            "age_min": age_min,
            "age_max": age_max,
            "split": split,
            "val": val,
            "test": test,
            "image_size": image_size,
            "drop_missing": drop_missing,
            "workers": workers,
            "seed": seed,
        },
        source="prepare options",
    )
    result = prepare(options, out, overwrite=overwrite)
    print_prepare(result)


def print_prepare(result) -> None:
    """Show label counts, co-occurrence and split summary of a PrepareResult."""
    summary = result.summary
    if result.n_missing:
        console.print(f"[yellow]dropped {result.n_missing} listed images that are missing[/]")
    console.print(frame_table(result.counts, "Label counts (images)"))
    console.print(frame_table(result.cooccurrence, "Co-occurrence of targets (images)"))
    table = Table(title="Split (by patient)")
    for col in ("split", "images", "patients", *summary["targets"]):
        table.add_column(col, justify="right")
    for name, part in summary["splits"].items():
        prev = [
            f"{part['prevalence'][t]:.3f}" if part["images"] else "-" for t in summary["targets"]
        ]
        table.add_row(name, str(part["images"]), str(part["patients"]), *prev)
    console.print(table)
    console.print(
        f"patient overlap between splits: {summary['patient_overlap']} (leakage check passed); "
        f"split hash {summary['split_hash'][:12]}"
    )
    cache = result.cache
    console.print(
        f"cache: {cache.n} images at {cache.size}x{cache.size} "
        f"({cache.decoded} decoded, {cache.reused} reused) in {cache.seconds:.1f} s"
    )
    console.print(f"[green]prepared[/] {result.data_dir}")
