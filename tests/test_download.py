"""`cxrlab download nih` against a real HTTP server on 127.0.0.1 (no internet).

The mirror serves a synthetic data set in the NIH layout, cut into three tar.gz archives in
Image Index order like the NIH release, with a sources file that names them.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlab.cli import app, main
from cxrlab.config import DownloadConfig
from cxrlab.data.manifest import read_manifest
from cxrlab.download import transfer, workflow
from cxrlab.download.archive import BadArchive
from cxrlab.download.progress import TqdmProgress
from cxrlab.download.workflow import download_nih
from cxrlab.errors import ConfigError, DataError
from cxrlab.synth import write_synthetic_dataset
from helpers_mirror import METADATA, Mirror, archive_name, serve, sources_file, tar_gz

N_ARCHIVES = 3


@pytest.fixture(scope="module")
def nih_like(tmp_path_factory):
    """(synthetic NIH folder, sorted image names, names per archive)."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, patients=24, seed=3, image_size=64)
    names = sorted(p.name for p in (root / "images").glob("*.png"))
    cut = [0, len(names) // 3, 2 * len(names) // 3, len(names)]
    chunks = [names[cut[k] : cut[k + 1]] for k in range(N_ARCHIVES)]
    return root, names, chunks


@pytest.fixture
def mirror(nih_like):
    root, _, chunks = nih_like
    files = {name: (root / name).read_bytes() for name in METADATA}
    for k, chunk in enumerate(chunks, start=1):
        files[archive_name(k)] = tar_gz(root, chunk)
    m = Mirror(files)
    server = serve(m)
    yield m
    server.shutdown()
    server.server_close()


@pytest.fixture
def sources(tmp_path, nih_like):
    return sources_file(tmp_path / "mirror.yaml", [len(c) for c in nih_like[2]])


def options(mirror: Mirror, sources: Path, **kw) -> DownloadConfig:
    return DownloadConfig(
        base_url=mirror.url, sources=str(sources), retry_wait=0, timeout=5, workers=1, **kw
    )


def run(mirror, sources, to, **kw):
    return download_nih(options(mirror, sources, **kw), to, progress=False, sleep=lambda s: None)


def test_full_download_extracts_checks_and_records_every_image(mirror, sources, tmp_path, nih_like):
    root, names, chunks = nih_like
    result = run(mirror, sources, tmp_path / "nih")
    out = tmp_path / "nih"
    assert result.complete and result.parts == [1, 2, 3]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert (out / "images" / names[0]).read_bytes() == (root / "images" / names[0]).read_bytes()
    assert not list(out.glob("*.tar.gz")) and not list(out.glob("*.part"))  # archives deleted
    manifest = read_manifest(out)
    second = manifest["archives"][archive_name(2)]
    assert second["names"] == chunks[1] and second["extracted"]
    assert second["sha256"] == hashlib.sha256(mirror.files[archive_name(2)]).hexdigest()
    assert result.received == sum(len(b) for b in mirror.files.values())


def test_second_run_transfers_nothing(mirror, sources, tmp_path):
    run(mirror, sources, tmp_path / "nih")
    mirror.log.clear()
    again = run(mirror, sources, tmp_path / "nih")
    assert mirror.log == [] and again.received == 0 and again.fetched == []
    assert again.complete


def test_an_image_deleted_after_download_brings_back_its_archive_only(
    mirror, sources, tmp_path, nih_like
):
    run(mirror, sources, tmp_path / "nih")
    gone = nih_like[2][2][0]
    (tmp_path / "nih" / "images" / gone).unlink()
    mirror.log.clear()
    again = run(mirror, sources, tmp_path / "nih")
    assert again.fetched == [archive_name(3)]
    assert (tmp_path / "nih" / "images" / gone).is_file()


def test_interrupted_transfer_resumes_with_only_the_missing_bytes(mirror, sources, tmp_path):
    name = archive_name(2)
    size = len(mirror.files[name])
    mirror.drop[name] = (1, size // 3)  # the connection drops a third of the way in
    with pytest.raises(DataError, match="run the same command again to resume"):
        run(mirror, sources, tmp_path / "nih", retries=0)
    part = tmp_path / "nih" / f"{name}.part"
    assert part.stat().st_size == size // 3
    mirror.log.clear()
    result = run(mirror, sources, tmp_path / "nih")
    (resumed,) = mirror.gets(name)
    assert resumed.range == f"bytes={size // 3}-"
    assert resumed.sent == size - size // 3
    assert mirror.gets(archive_name(1)) == []  # finished before the drop: not fetched again
    assert result.complete


def test_ctrl_c_mid_transfer_leaves_a_part_file_the_next_run_continues(
    mirror, sources, tmp_path, monkeypatch
):
    name = archive_name(2)

    class CtrlC(TqdmProgress):
        def start(self, file, total, have):
            super().start(file, total, have)
            self.current = file

        def advance(self, n):
            super().advance(n)
            if self.current == name:
                raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "TqdmProgress", CtrlC)
    monkeypatch.setattr(transfer, "CHUNK", 1000)  # Ctrl-C after the first 1,000 bytes
    with pytest.raises(KeyboardInterrupt):
        run(mirror, sources, tmp_path / "nih")
    kept = (tmp_path / "nih" / f"{name}.part").stat().st_size
    assert kept == 1000 < len(mirror.files[name])
    monkeypatch.undo()
    mirror.log.clear()
    assert run(mirror, sources, tmp_path / "nih").complete
    assert [r.range for r in mirror.gets(name)] == [f"bytes={kept}-"]


def test_dropped_connection_is_retried_from_where_it_stopped(mirror, sources, tmp_path):
    name = archive_name(1)
    mirror.drop[name] = (2, 100)
    result = run(mirror, sources, tmp_path / "nih", retries=2)
    ranges = [r.range for r in mirror.gets(name)]
    assert ranges == [None, "bytes=100-", "bytes=200-"]
    assert result.complete and result.refetched == []


def test_server_without_range_restarts_the_file_with_a_warning(mirror, sources, tmp_path, caplog):
    name = archive_name(3)
    mirror.drop[name] = (1, 500)
    mirror.ranges = False
    with caplog.at_level(logging.WARNING):
        result = run(mirror, sources, tmp_path / "nih", retries=1)
    assert result.restarted == [name] and result.complete
    assert "does not support resuming" in caplog.text
    assert [r.sent for r in mirror.gets(name)] == [500, len(mirror.files[name])]


def test_corrupted_archive_is_fetched_again_alone(mirror, sources, tmp_path):
    mirror.corrupt[archive_name(2)] = 1
    result = run(mirror, sources, tmp_path / "nih")
    assert result.refetched == [archive_name(2)] and result.complete
    assert [len(mirror.gets(archive_name(k))) for k in (1, 2, 3)] == [1, 2, 1]


def test_archive_still_bad_after_refetch_is_one_line_cli_error(mirror, sources, tmp_path, capsys):
    mirror.corrupt[archive_name(2)] = 2
    args = [
        "download",
        "nih",
        "--to",
        str(tmp_path / "nih"),
        "--base-url",
        mirror.url,
        "--sources",
        str(sources),
        "--no-progress",
        "--timeout",
        "5",
    ]
    code, _, err = _main(args, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert archive_name(2) in lines[0] and "still bad" in lines[0]
    assert not (tmp_path / "nih" / archive_name(2)).exists()


def test_truncated_png_inside_a_valid_archive_is_caught(mirror, sources, tmp_path, nih_like):
    root, _, chunks = nih_like
    bad = chunks[0][1]
    mirror.files[archive_name(1)] = tar_gz(root, chunks[0], damaged=bad)
    with pytest.raises(BadArchive, match=f"{archive_name(1)}.*do not decode.*{bad}"):
        run(mirror, sources, tmp_path / "nih")
    assert len(mirror.gets(archive_name(1))) == 2


def test_checksum_from_the_sources_file_is_checked(mirror, tmp_path, nih_like):
    counts = [len(c) for c in nih_like[2]]
    wrong = sources_file(tmp_path / "s.yaml", counts, sha256={archive_name(1): "0" * 64})
    with pytest.raises(BadArchive, match=f"{archive_name(1)} has SHA-256 .*says 0000"):
        run(mirror, wrong, tmp_path / "nih")
    good = hashlib.sha256(mirror.files[archive_name(1)]).hexdigest()
    right = sources_file(tmp_path / "s.yaml", counts, sha256={archive_name(1): good})
    assert run(mirror, right, tmp_path / "nih").complete


def test_images_n_fetches_only_the_archives_needed(mirror, sources, tmp_path, nih_like):
    chunks = nih_like[2]
    result = run(mirror, sources, tmp_path / "nih", images=len(chunks[0]) + 1)
    assert result.parts == [1, 2] and not result.complete
    assert mirror.gets(archive_name(3)) == []
    assert result.images == len(chunks[0]) + len(chunks[1])


def test_parts_and_images_together_are_refused(mirror, sources, tmp_path):
    with pytest.raises(ConfigError, match="--parts or --images"):
        run(mirror, sources, tmp_path / "nih", parts="1", images=3)
    assert mirror.log == []


def test_not_enough_disk_space_is_refused_before_any_archive(
    mirror, sources, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        workflow.shutil,
        "disk_usage",
        lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000),
    )
    with pytest.raises(DataError, match=r"not enough free disk space .*~2x an archive"):
        run(mirror, sources, tmp_path / "nih")
    assert [r.name for r in mirror.gets()] == list(METADATA)  # no archive fetched


def test_metadata_put_in_by_hand_is_used_and_only_archives_are_fetched(mirror, tmp_path, nih_like):
    root, names, chunks = nih_like
    out = tmp_path / "nih"
    out.mkdir()
    for name in METADATA:
        shutil.copy(root / name, out / name)  # the 2017 name, where NIH's file is v2020
    bundled_names = ("Data_Entry_2017_v2020.csv", *METADATA[1:])
    src = sources_file(tmp_path / "s.yaml", [len(c) for c in chunks], metadata=bundled_names)
    for name in METADATA:
        del mirror.files[name]
    result = run(mirror, src, out)
    assert result.complete and result.images == len(names)
    assert sorted(r.name for r in mirror.gets()) == [archive_name(k) for k in (1, 2, 3)]
    record = read_manifest(out)["metadata"]["Data_Entry_2017_v2020.csv"]
    assert record["file"] == "Data_Entry_2017.csv"


def test_unknown_links_need_base_url_and_nothing_is_fetched(tmp_path):
    with pytest.raises(ConfigError, match=r"Data_Entry_2017_v2020\.csv.*--base-url") as info:
        download_nih(DownloadConfig(), tmp_path / "nih", progress=False)
    assert "nihcc.app.box.com/v/ChestXray-NIHCC" in str(info.value)


def test_prepare_draws_from_a_partial_download_and_says_what_is_missing(
    mirror, sources, tmp_path, nih_like, capsys
):
    out = tmp_path / "nih"
    run(mirror, sources, out, parts="1-2")
    code, _, err = _main(
        ["prepare", "--data-root", str(out), "--out", str(tmp_path / "run"), "--image-size", "32"],
        capsys,
    )
    assert code == 1
    err = " ".join(err.split())
    assert f"cxrlab download nih --to {out} --parts 3" in err
    assert "2 of 3 image archives" in err and "--drop-missing" in err
    n_present = len(nih_like[2][0]) + len(nih_like[2][1])
    done = _cli(
        [
            "prepare",
            "--data-root",
            str(out),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "32",
            "--drop-missing",
            "--val",
            "0.2",
            "--test",
            "0.2",
        ]
    )
    assert done.exit_code == 0, done.output
    cohort = (tmp_path / "run" / "data" / "cohort.csv").read_text().splitlines()
    assert len(cohort) - 1 == n_present


def test_ctrl_c_says_how_to_resume(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "download_nih", interrupted)
    result = _cli(["download", "nih", "--to", str(tmp_path), "--base-url", "http://127.0.0.1:9"])
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.output


def _cli(args):
    return CliRunner().invoke(app, args)


def _main(args, capsys) -> tuple[int, str, str]:
    """Run the console entry point (where CxrError becomes one line): (code, out, err)."""
    capsys.readouterr()
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    out, err = capsys.readouterr()
    return code, out, err
