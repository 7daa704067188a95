"""Submission CSV: what `formats.write_submission` writes passes `validate-submission`, and
each rule of the competition format is caught on a bad file, with its line number."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hrnet_sweep.formats import read_submission, write_submission
from hrnet_sweep.submission import main, validate_submission

pytestmark = pytest.mark.unit

HEADER = "filename,polygons\n"
QUAD = "10 10 50 10 50 30 10 30"


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("a.jpg", "b.jpg", "c.png"):
        Image.new("RGB", (100, 80)).save(d / name)
    return d


def write(tmp_path, text, name="sub.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def test_written_submission_is_valid_and_round_trips(tmp_path, images):
    preds = {
        "a.jpg": [
            np.array([[10.2, 10.7], [50, 10], [50, 30], [10, 30]], np.float32),
            np.array([[1, 1], [9, 1], [12, 5], [9, 9], [1, 9]], np.float32),
        ],
        "b.jpg": [],
        "c.png": [np.array([[0, 0], [99, 0], [99, 79], [0, 79]], np.float32)],
    }
    path = write_submission(tmp_path / "s.csv", preds)
    rep = validate_submission(path, images=images)
    assert rep.valid and not rep.warnings, [str(i) for i in rep.errors + rep.warnings]
    assert (rep.rows, rep.polygons, rep.empty_rows) == (3, 3, 1)
    back = read_submission(path)
    assert back["b.jpg"] == [] and back["a.jpg"][0].tolist()[0] == [10, 11]
    assert main([str(path), "--images", str(images)]) == 0


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("file,polys\na.jpg,\n", 1, "header must be exactly"),
        ("\ufefffilename,polygons\na.jpg,\n", 1, "byte-order mark"),
        (HEADER + "a.jpg,10 10 50 10 50 30\n", None, None),  # 3 points: only a warning
        (HEADER + "a.jpg,10 10  50 10 50 30 10 30\n", 2, "single spaces"),
        (HEADER + "a.jpg, 10 10 50 10 50 30 10 30\n", 2, "single spaces"),
        (HEADER + "a.jpg,10.5 10 50 10 50 30 10 30\n", 2, "integers, found '10.5'"),
        (HEADER + "a.jpg,10 10 50 10 50 30 10\n", 2, "odd number of coordinates (7)"),
        (HEADER + f"a.jpg,{QUAD}||{QUAD}\n", 2, "polygon 2: empty"),
        (HEADER + f"a.jpg,{QUAD}|\n", 2, "polygon 2: empty"),
        (HEADER + "a.jpg,\nb.jpg,1,2\n", 3, "expected 2 fields"),
        (HEADER + f"a.jpg,\nb.jpg,{QUAD}\na.jpg,\n", 4, "duplicate row; first at line 2"),
        (HEADER + ",\n", 2, "empty filename"),
        (HEADER + "a.jpg,1e3 1 2 3 4 5 6 7\n", 2, "integers"),
    ],
)
def test_bad_files_name_the_line(tmp_path, text, line, fragment):
    rep = validate_submission(write(tmp_path, text))
    if fragment is None:
        assert rep.valid
        return
    assert not rep.valid
    hit = [i for i in rep.errors if fragment in str(i)]
    assert hit, [str(i) for i in rep.errors]
    assert hit[0].line == line


def test_warnings_do_not_invalidate(tmp_path):
    many = "|".join(f"{i} 0 {i + 1} 0 {i + 1} 1 {i} 1" for i in range(501))
    text = HEADER + f"a.jpg,10 10 50 10 50 30|{QUAD}|{QUAD}\nb.jpg,{many}\n\n"
    rep = validate_submission(write(tmp_path, text))
    assert rep.valid
    msgs = [str(w) for w in rep.warnings]
    assert any("line 2 (row 1, a.jpg): polygon 1: 3 points" in m for m in msgs)
    assert any("polygon 3 repeats polygon 2" in m for m in msgs)
    assert any("501 polygons" in m and "line 3" in m for m in msgs)
    assert any("blank line" in m for m in msgs)
    assert main([str(write(tmp_path, text))]) == 0


def test_images_folder_every_image_once_no_extra(tmp_path, images):
    text = HEADER + f"a.jpg,{QUAD}\nzzz.jpg,\nc.png,0 0 500 0 500 10 0 10\n"
    rep = validate_submission(write(tmp_path, text), images=images)
    errors = [str(e) for e in rep.errors]
    assert any("line 3 (row 2, zzz.jpg): not an image of" in e for e in errors)
    assert any("b.jpg" in e and "has no row" in e for e in errors)
    assert any("outside the 100x80 image" in str(w) for w in rep.warnings)
    assert main([str(write(tmp_path, text)), "--images", str(images)]) == 2


def test_quoted_multiline_field_reports_its_first_line(tmp_path):
    text = HEADER + 'a.jpg,"10 10 50 10\n50 30 10 30"\nb.jpg,1 2 3\n'
    rep = validate_submission(write(tmp_path, text))
    lines = sorted(i.line for i in rep.errors)
    assert lines == [2, 4]


def test_empty_and_non_utf8_files(tmp_path):
    assert "empty file" in str(validate_submission(write(tmp_path, "")).errors[0])
    p = tmp_path / "latin1.csv"
    p.write_bytes(HEADER.encode() + "\xe9.jpg,\n".encode("latin-1"))
    assert "not UTF-8" in str(validate_submission(p).errors[0])


def test_cli_invalid_exit_code_and_output(tmp_path, capsys):
    assert main([str(write(tmp_path, HEADER + "a.jpg,1 2 3\n"))]) == 2
    out = capsys.readouterr().out
    assert "line 2 (row 1, a.jpg): polygon 1: odd number" in out and "INVALID" in out
