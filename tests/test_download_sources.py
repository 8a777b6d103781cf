"""The sources data file (nih.yaml) and the plan of which archives a run fetches."""

from __future__ import annotations

import pytest

from cxrlab.data.manifest import format_parts
from cxrlab.data.metadata import read_data_entry
from cxrlab.download.sources import (
    load_source,
    parse_parts,
    parts_for_images,
    plan_archives,
    url_of,
)
from cxrlab.errors import ConfigError
from cxrlab.labels import IMAGE_INDEX


def test_bundled_nih_file_names_12_archives_of_112120_images():
    source = load_source()
    names = [a.name for a in source.archives]
    assert names == [f"images_{k:03d}.tar.gz" for k in range(1, 13)]
    assert sum(a.images for a in source.archives) == 112_120
    assert [m.name for m in source.metadata][0] == "Data_Entry_2017_v2020.csv"
    assert all(m.url is None for m in source.metadata)  # not known: --base-url or by hand
    assert all(a.url.startswith("https://nihcc.box.com/shared/static/") for a in source.archives)
    assert "ChestX-ray8" in source.licence


def test_base_url_replaces_every_link_by_the_file_name():
    archive = load_source().archives[2]
    assert url_of(archive, "https://mirror.example/nih/") == (
        "https://mirror.example/nih/images_003.tar.gz"
    )
    assert url_of(archive, None) == archive.url


@pytest.mark.parametrize(
    ("spec", "numbers"), [("1-3", [1, 2, 3]), ("2", [2]), ("5, 1-2,2", [1, 2, 5])]
)
def test_parse_parts(spec, numbers):
    assert parse_parts(spec, 12) == numbers
    assert parse_parts(format_parts(numbers), 12) == numbers


@pytest.mark.parametrize("spec", ["0", "13", "3-1", "a", "1-"])
def test_parse_parts_refuses_what_is_not_an_archive_number(spec):
    with pytest.raises(ConfigError, match="--parts"):
        parse_parts(spec, 12)


def test_images_n_takes_the_fewest_leading_archives():
    source = load_source()
    assert parts_for_images(source, 1) == [1]
    assert parts_for_images(source, 4999) == [1]
    assert parts_for_images(source, 5000) == [1, 2]
    assert parts_for_images(source, 112_120) == list(range(1, 13))
    with pytest.raises(ConfigError, match="more than the 112120 images"):
        parts_for_images(source, 112_121)
    assert [a.name for a in plan_archives(source, "12", None)] == ["images_012.tar.gz"]


def test_bad_sources_file_names_the_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\nlanding_page: y\nlicence: z\nmetadata: []\narchives:\n"
        "  - {name: a.tar.gz, images: 0}\n"
    )
    with pytest.raises(ConfigError, match=r"s\.yaml: archives\.0\.images: .*greater"):
        load_source(path)


@pytest.mark.realdata
def test_counts_give_the_archive_ranges_of_the_real_data_entry(nih_metadata):
    names = read_data_entry(nih_metadata / "Data_Entry_2017_v2020.csv.gz")[IMAGE_INDEX]
    ranges = load_source().expected_ranges(list(names))
    first = ranges["images_001.tar.gz"]
    assert (first[0], first[-1], len(first)) == ("00000001_000.png", "00001335_006.png", 4999)
    assert ranges["images_012.tar.gz"][-1] == "00030805_000.png"
    assert sum(len(v) for v in ranges.values()) == len(set(names)) == 112_120
