"""`cxrlab download nih`: the NIH ChestX-ray14 release into a folder `prepare` reads."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrlab.cli.app import app, console, err_console
from cxrlab.cli.options import from_config
from cxrlab.config import DownloadConfig

download_app = typer.Typer(no_args_is_help=True)
app.add_typer(download_app, name="download")


@download_app.callback()
def download_group() -> None:
    """Fetch a public data set, checked, into the layout `cxrlab prepare` reads."""


@download_app.command("nih")
def download_nih_command(
    to: Path = typer.Option(..., help="Folder to fill; then `cxrlab prepare --data-root` it."),
    base_url: str = from_config(
        DownloadConfig,
        "base_url",
        help="A mirror with NIH's file names (images_001.tar.gz, Data_Entry_2017_v2020.csv, ...)"
        " instead of the links in the bundled nih.yaml.",
    ),
    parts: str = from_config(
        DownloadConfig, "parts", help="Archives to fetch, e.g. 1-3 or 1,4 (default: all 12)."
    ),
    images: int = from_config(
        DownloadConfig, "images", help="Fetch the fewest archives that hold N images."
    ),
    keep_archives: bool = from_config(
        DownloadConfig, "keep_archives", help="Keep each .tar.gz after it is extracted."
    ),
    sources: Path = from_config(
        DownloadConfig, "sources", help="A sources file like the bundled nih.yaml (links...)."
    ),
    retries: int = from_config(DownloadConfig, "retries", help="Failed tries in a row per file."),
    timeout: float = from_config(
        DownloadConfig, "timeout", help="Seconds without data before a try fails."
    ),
    workers: int = from_config(
        DownloadConfig, "workers", help="Threads decoding the extracted PNGs to check them."
    ),
    progress: bool = typer.Option(True, help="Show progress bars per file and overall."),
) -> None:
    """Fetch the metadata and image archives (resumable), check and extract them into TO.

    A second run fetches nothing; an interrupted one resumes where it stopped.
    """
    from cxrlab.config import build
    from cxrlab.download.workflow import describe_parts, download_nih

    options = build(
        DownloadConfig,
        {
            "base_url": base_url,
            "parts": parts,
            "images": images,
            "keep_archives": keep_archives,
            "sources": str(sources) if sources else None,
            "retries": retries,
            "timeout": timeout,
            "workers": workers,
        },
        source="download options",
    )
    try:
        result = download_nih(options, to, progress=progress)
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted:[/] finished files are kept in {to}, a file in transfer as"
            " NAME.part; run the same command again to resume"
        )
        raise typer.Exit(130) from None
    for name in result.restarted:
        console.print(f"[yellow]warning:[/] {name} was restarted: the server ignores HTTP Range")
    for name in result.refetched:
        console.print(f"[yellow]warning:[/] {name} failed its check and was fetched again")
    console.print(
        f"fetched {len(result.fetched)} file(s), {_size(result.received)}, in this run;"
        f" archives {describe_parts(result)} extracted and checked:"
        f" {result.images} of {result.expected_images} images; manifest {result.manifest}"
    )
    console.print(
        'Cite Wang et al., "ChestX-ray8", CVPR 2017, and acknowledge the NIH Clinical Center.'
    )
    # A partial download holds only some of Data_Entry's images: prepare must be told.
    partial = "" if result.complete else " --drop-missing"
    console.print(f"[green]ready:[/] cxrlab prepare --data-root {to} --out RUN_DIR{partial}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
