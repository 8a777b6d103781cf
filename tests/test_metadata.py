"""Reading NIH metadata files (both Data_Entry revisions, split lists, boxes) and images."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.discovery import discover_images, resolve_images
from cxrlab.data.metadata import (
    ENTRY_COLUMNS,
    find_metadata_files,
    findings_matrix,
    read_bbox_list,
    read_data_entry,
    read_split_lists,
)
from cxrlab.errors import DataError
from cxrlab.labels import FINDINGS

HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pleural_Thickening,0,3,74,F,PA,2500,2048,0.168,0.168",
]


def write_2020(path: Path, rows=ROWS) -> Path:
    path.write_text(HEADER_2020 + "\n" + "\n".join(rows) + "\n")
    return path


def write_2017(path: Path, rows=ROWS) -> Path:
    """The 2017 file: header and every row end in an empty column (a trailing comma)."""
    path.write_text(HEADER_2020 + ",\n" + "".join(row + ",\n" for row in rows))
    return path


# --- Data_Entry ---------------------------------------------------------------------------


def test_reads_2020_revision_with_normalised_columns(tmp_path):
    df = read_data_entry(write_2020(tmp_path / "Data_Entry_2017_v2020.csv"))
    assert tuple(df.columns) == ENTRY_COLUMNS
    assert df["Image Index"].tolist() == [r.split(",")[0] for r in ROWS]
    assert df["Patient ID"].tolist() == [1, 1, 2, 3]
    assert df["follow_up"].tolist() == [0, 1, 0, 0]
    assert df["age"].tolist() == [58, 58, 81, 74]
    assert df["sex"].tolist() == ["M", "M", "F", "F"]
    assert df["view"].tolist() == ["PA", "PA", "AP", "PA"]
    assert df["Finding Labels"].iloc[1] == "Cardiomegaly|Emphysema"
    assert df["Patient ID"].dtype == np.int64 and df["age"].dtype == np.int64


def test_2017_trailing_empty_column_gives_the_same_frame(tmp_path):
    new = read_data_entry(write_2020(tmp_path / "a.csv"))
    old = read_data_entry(write_2017(tmp_path / "Data_Entry_2017.csv"))
    pd.testing.assert_frame_equal(old, new)


def test_rows_with_a_trailing_comma_under_a_plain_header_keep_their_columns(tmp_path):
    # Without index_col=False pandas would silently move Image Index into the index.
    path = tmp_path / "d.csv"
    path.write_text(HEADER_2020 + "\n" + "".join(row + ",\n" for row in ROWS))
    df = read_data_entry(path)
    assert df["Image Index"].iloc[0] == "00000001_000.png" and df["age"].iloc[0] == 58


def test_gzip_is_accepted(tmp_path):
    path = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(HEADER_2020 + "\n" + "\n".join(ROWS) + "\n")
    assert len(read_data_entry(path)) == 4


def test_findings_matrix_is_aligned_with_rows(tmp_path):
    df = read_data_entry(write_2020(tmp_path / "d.csv"))
    full = findings_matrix(df)  # (4, 14) over FINDINGS
    assert full.shape == (4, 14) and full.dtype == np.uint8
    expected = np.zeros((4, 14), dtype=np.uint8)
    expected[0, FINDINGS.index("Cardiomegaly")] = 1
    expected[1, [FINDINGS.index("Cardiomegaly"), FINDINGS.index("Emphysema")]] = 1
    expected[3, [FINDINGS.index("Hernia"), FINDINGS.index("Pleural_Thickening")]] = 1
    np.testing.assert_array_equal(full, expected)
    chosen = findings_matrix(df, ["Hernia", "Cardiomegaly"])  # target order is kept
    np.testing.assert_array_equal(chosen, [[0, 1], [0, 1], [0, 0], [1, 0]])


def test_missing_columns_are_named_with_the_file(tmp_path):
    header = HEADER_2020.replace("Patient Age,", "").replace("View Position,", "")
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(header + "\n")
    with pytest.raises(DataError) as err:
        read_data_entry(path)
    msg = str(err.value)
    assert "'Patient Age'" in msg and "'View Position'" in msg and str(path) in msg
    assert "'Patient Gender'" not in msg.split("required")[0]


def test_unknown_label_names_label_line_and_image(tmp_path):
    rows = ROWS[:2] + ["00000002_000.png,Effusion|Pneumonitis,0,2,81,F,AP,1,1,0.1,0.1"]
    path = write_2017(tmp_path / "Data_Entry_2017.csv", rows)
    with pytest.raises(DataError) as err:
        read_data_entry(path)
    msg = str(err.value)
    assert "'Pneumonitis'" in msg and "line 4" in msg and "00000002_000.png" in msg


@pytest.mark.parametrize(
    ("cell", "value", "expected"),
    [(4, "x58", "Patient Age 'x58'"), (5, "U", "Patient Gender 'U'"), (6, "LL", "'LL'")],
)
def test_bad_values_are_named_with_their_row(tmp_path, cell, value, expected):
    cells = ROWS[2].split(",")
    cells[cell] = value
    path = write_2020(tmp_path / "d.csv", [ROWS[0], ",".join(cells)])
    with pytest.raises(DataError, match="line 3") as err:
        read_data_entry(path)
    assert expected in str(err.value)


def test_ages_with_year_suffix_and_above_100_are_kept(tmp_path):
    rows = [ROWS[0].replace(",58,", ",058Y,"), ROWS[2].replace(",81,", ",412,")]
    df = read_data_entry(write_2020(tmp_path / "d.csv", rows))
    assert df["age"].tolist() == [58, 412]


def test_duplicate_image_index_is_an_error(tmp_path):
    path = write_2020(tmp_path / "d.csv", [ROWS[0], ROWS[0]])
    with pytest.raises(DataError, match="00000001_000.png"):
        read_data_entry(path)


# --- split lists, boxes, file discovery -----------------------------------------------------


def test_split_lists_and_their_errors(tmp_path):
    (tmp_path / "train_val_list.txt").write_text("a.png\nb.png\n\n")
    with pytest.raises(DataError, match="test_list.txt"):
        read_split_lists(tmp_path)
    (tmp_path / "test_list.txt").write_text("c.png\n")
    assert read_split_lists(tmp_path) == {"train_val": {"a.png", "b.png"}, "test": {"c.png"}}
    (tmp_path / "test_list.txt").write_text("c.png\nb.png\n")
    with pytest.raises(DataError, match="b.png"):
        read_split_lists(tmp_path)


BBOX_ROWS_2017 = [
    "00013118_008.png,Atelectasis,225.5,547.0,86.75,79.25,,,",
    "00014716_007.png,Infiltrate,686.0,131.5,185.5,313.5,,,",
]


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("Image Index,Finding Label,Bbox [x,y,w,h],,,", [r[:-3] for r in BBOX_ROWS_2017]),
        ("Image Index,Finding Label,Bbox [x,y,w,h],Unnamed: 6,Unnamed: 7,Unnamed: 8", None),
    ],
)
def test_bbox_list_both_headers(tmp_path, header, rows):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(header + "\n" + "\n".join(rows or BBOX_ROWS_2017) + "\n")
    boxes = read_bbox_list(path)
    assert list(boxes.columns) == ["Image Index", "label", "x", "y", "w", "h"]
    assert boxes["label"].tolist() == ["Atelectasis", "Infiltration"]
    np.testing.assert_allclose(
        boxes[["x", "y", "w", "h"]].to_numpy()[1], [686, 131.5, 185.5, 313.5]
    )


def test_bbox_unknown_label_is_an_error(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Tumour,1,2,3,4\n")
    with pytest.raises(DataError, match="'Tumour'.*line 2"):
        read_bbox_list(path)


def test_find_metadata_files(tmp_path, caplog):
    with pytest.raises(DataError, match=r"Data_Entry_2017\*\.csv"):
        find_metadata_files(tmp_path)
    write_2017(tmp_path / "Data_Entry_2017.csv")
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress(b"x"))
    (tmp_path / "test_list.txt").write_text("a.png\n")
    with caplog.at_level(logging.WARNING):
        files = find_metadata_files(tmp_path)
    assert files.data_entry.name == "Data_Entry_2017_v2020.csv.gz"  # the newer revision
    assert "several files" in caplog.text
    assert files.test_list == tmp_path / "test_list.txt"
    assert files.train_val_list is None and files.bbox_list is None


# --- image discovery ----------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_discovers_nih_kaggle_and_flat_layouts(tmp_path):
    nih = touch(tmp_path / "images" / "00000001_000.png")
    k1 = touch(tmp_path / "images_001" / "images" / "00000001_001.png")
    k12 = touch(tmp_path / "images_012" / "images" / "00000002_000.png")
    flat = touch(tmp_path / "00000003_000.png")
    touch(tmp_path / "full_res" / "00000009_000.png")  # other folders are not scanned
    touch(tmp_path / "images" / "notes.txt")
    found = discover_images(tmp_path)
    assert found == {
        "00000001_000.png": nih,
        "00000001_001.png": k1,
        "00000002_000.png": k12,
        "00000003_000.png": flat,
    }


def test_same_image_twice_is_an_error(tmp_path):
    touch(tmp_path / "images" / "a.png")
    touch(tmp_path / "images_001" / "images" / "a.png")
    with pytest.raises(DataError, match="a.png is present twice"):
        discover_images(tmp_path)


def test_missing_images_error_and_drop_missing(tmp_path):
    df = read_data_entry(write_2020(tmp_path / "d.csv"))
    root = tmp_path / "data"
    touch(root / "images" / "00000001_001.png")
    touch(root / "images" / "00000003_000.png")
    with pytest.raises(DataError) as err:
        resolve_images(df, root)
    msg = str(err.value)
    assert "2 of 4" in msg and "00000001_000.png, 00000002_000.png" in msg
    assert "--drop-missing" in msg
    kept, paths, n_missing = resolve_images(df, root, drop_missing=True)
    assert n_missing == 2
    assert kept["Image Index"].tolist() == ["00000001_001.png", "00000003_000.png"]
    assert kept.index.tolist() == [0, 1]
    assert [p.name for p in paths] == kept["Image Index"].tolist()


def test_no_images_at_all_says_where_it_looked(tmp_path):
    df = read_data_entry(write_2020(tmp_path / "d.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="images_NNN"):
        resolve_images(df, tmp_path / "empty")


# --- real data ----------------------------------------------------------------------------


def test_full_metadata_reads_with_known_counts(nih_metadata):
    files = find_metadata_files(nih_metadata)
    df = read_data_entry(files.data_entry)
    assert len(df) == 112_120 and df["Patient ID"].nunique() == 30_805
    counts = findings_matrix(df, ["Atelectasis", "Effusion", "Infiltration", "Pneumothorax"])
    assert counts.sum(axis=0).tolist() == [11_559, 13_317, 19_894, 5_302]
    lists = read_split_lists(nih_metadata)
    assert (len(lists["train_val"]), len(lists["test"])) == (86_524, 25_596)
    boxes = read_bbox_list(files.bbox_list)
    assert len(boxes) == 984 and boxes["Image Index"].nunique() == 880
    assert set(boxes["label"]) <= set(FINDINGS)


def test_dev_set_files_and_images(nih_dev):
    df = read_data_entry(nih_dev / "Data_Entry_2017.csv")
    counts = findings_matrix(df, ["Atelectasis", "Effusion", "Infiltration", "Pneumothorax"])
    assert counts.sum(axis=0).tolist() == [139, 118, 214, 39]
    kept, paths, n_missing = resolve_images(df, nih_dev)
    assert n_missing == 0 and len(paths) == 1_108 and all(p.parent.name == "images" for p in paths)
    assert len(read_bbox_list(nih_dev / "BBox_List_2017.csv")) == 41
