"""Bad input to the readers and the metric: a file a reader cannot handle is a one-line
`DataError` naming it (never a traceback, never a hang); every number read is a finite
number of its type; and what is scored is what the competition scores (zero-area words,
GT rounded from float64, the first 500 detections, one row per image).

Tests that open a FIFO run under `_within`, which fails the test after a bound and
unblocks the reader, so a regression cannot hang the suite.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np
import pytest
import reference_postprocess as bench
from PIL import Image

from hrnet_sweep import formats, submission
from hrnet_sweep.cli import main as cli
from hrnet_sweep.dbnet.data import read_image
from hrnet_sweep.errors import DataError
from hrnet_sweep.metric import evaluate
from hrnet_sweep.metric._polygons import _pack

pytestmark = pytest.mark.unit

HEADER = "filename,polygons\n"
QUAD = "10 10 50 10 50 30 10 30"
BOUND_S = 20.0


def _within(fn, fifo=None, seconds: float = BOUND_S):
    """fn() in a thread; fail after `seconds`, first opening `fifo` for writing so that a
    reader blocked on it gets end-of-file and the thread ends."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"still blocked after {seconds:.0f} s: a reader opened a FIFO")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _raises(fn, *needles, fifo=None) -> str:
    with pytest.raises(DataError) as err:
        _within(fn, fifo)
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def _gt_doc(images: dict) -> str:
    return json.dumps({"images": {n: {"words": {k: {"points": p} for k, p in w.items()}} for n, w in images.items()}})


def _box(x0, y0, x1, y1) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# ============================================================================ files a reader cannot handle


READERS = {
    "read_json": formats.read_json,
    "load_annotations": formats.load_annotations,
    "load_predictions": formats.load_predictions,
    "read_submission": formats.read_submission,
    "validate_submission": submission.validate_submission,
    "read_image": read_image,
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_every_reader_refuses_a_directory_or_a_fifo_naming_it(reader, kind, tmp_path):
    path = tmp_path / ("x.csv" if "submission" in reader else "x.json")
    if kind == "directory":
        path.mkdir()
        _raises(lambda: READERS[reader](path), str(path), "is a directory, not a regular file")
    else:
        os.mkfifo(path)
        _raises(lambda: READERS[reader](path), str(path), "named pipe (FIFO)", fifo=path)


def test_fifo_image_in_train_json_fails_before_training_instead_of_hanging(tmp_path):
    """The reproducer: `mkfifo d/images/f.jpg`, listed in train.json with one word."""
    from hrnet_sweep.config import load_config
    from hrnet_sweep.pipeline.train import run

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (160, 200), "white").save(images / "good.jpg")
    os.mkfifo(images / "f.jpg")
    word = {"0001": _box(20, 30, 120, 50)}
    (tmp_path / "train.json").write_text(_gt_doc({"good.jpg": word, "f.jpg": word}))
    cfg = load_config(
        [
            "preset=hrnet_w18_small_cpu",
            "data.image_height=64",
            "data.image_width=64",
            "data.batch_size=1",
            "data.num_workers=0",
            "models.decoder.inner_channels=16",
            "trainer.progress_bar=false",
            "logging.tensorboard=false",
            "trainer.max_epochs=1",
            "data.fold=null",
            "data.train_json=train.json",
            "data.val_json=train.json",
            f"data.root={tmp_path}",
            f"output_dir={tmp_path / 'out'}",
            "run_name=fifo",
        ]
    )
    msg = _raises(lambda: run(cfg), "f.jpg", "named pipe (FIFO)", fifo=images / "f.jpg")
    status = json.loads((tmp_path / "out" / "fifo" / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == msg
    _raises(lambda: read_image(images / "f.jpg"), "f.jpg", "FIFO", fifo=images / "f.jpg")


def test_json_nested_too_deeply_or_with_a_huge_integer_names_the_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _raises(lambda: formats.load_annotations(deep), "deep.json", "nested too deeply")
    _raises(lambda: formats.load_predictions(deep), "deep.json", "nested too deeply")
    huge = tmp_path / "huge.json"
    huge.write_text('{"images": {"a.jpg": {"img_w": ' + "9" * 5000 + "}}}")
    _raises(lambda: formats.load_annotations(huge), "huge.json", "unreadable JSON")


def test_json_number_in_non_ascii_digits_is_malformed_json_naming_the_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(
        '{"images": {"a.jpg": {"words": {"1": {"points": [[\u0661\u0663, 0], [4, 0], [4, 4]]}}}}}', encoding="utf-8"
    )
    _raises(lambda: formats.load_annotations(path), "gt.json", "malformed JSON at line 1")


def test_bad_encoding_names_the_file(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_bytes('{"images": {"caf\u00e9.jpg": {}}}'.encode("latin-1"))
    _raises(lambda: formats.load_annotations(gt), "gt.json", "not UTF-8")
    csv_path = tmp_path / "sub.csv"
    csv_path.write_bytes((HEADER + "caf\u00e9.jpg,\n").encode("latin-1"))
    _raises(lambda: formats.read_submission(csv_path), "sub.csv", "not UTF-8")
    assert "not UTF-8" in str(submission.validate_submission(csv_path).errors[0])


def test_csv_field_past_the_bound_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "CSV_FIELD_LIMIT", 1000)
    path = tmp_path / "sub.csv"
    path.write_text(HEADER + "a.jpg," + "|".join([QUAD] * 100) + "\n")
    _raises(lambda: formats.read_submission(path), "sub.csv", "line 2", "not CSV", "field larger than field limit")
    report = submission.validate_submission(path)
    assert [i.message for i in report.errors] == ["not CSV: field larger than field limit (1000)"]


# ============================================================================ numbers


@pytest.mark.parametrize("value", [True, False, "10", None, [10], 10**400], ids=repr)
def test_annotation_coordinate_that_is_no_finite_number_skips_the_word_naming_it(value, tmp_path, caplog):
    path = tmp_path / "gt.json"
    path.write_text(_gt_doc({"a.jpg": {"0001": _box(0, 0, 40, 10), "0002": [[value, 0], [40, 0], [40, 10], [0, 10]]}}))
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        (word,) = formats.load_annotations(path)["a.jpg"].words
    assert word.key == "0001"
    assert f"{path}: image 'a.jpg' word '0002': points " in caplog.text and "; skipped" in caplog.text
    with pytest.raises(DataError, match="word '0002'"):
        formats.load_annotations(path, strict=True)


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), -640, 0, 640.5, "640"], ids=repr)
def test_img_w_img_h_that_are_no_positive_whole_number_are_ignored_with_a_warning(value, tmp_path, caplog):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": {"a.jpg": {"img_w": value, "img_h": 480, "words": {}}}}))
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        ann = formats.load_annotations(path)["a.jpg"]
    assert (ann.width, ann.height) == (None, 480)
    assert f"{path}: image 'a.jpg': img_w={value!r} is not a positive whole number; ignored" in caplog.text
    with pytest.raises(DataError, match="img_w="):
        formats.load_annotations(path, strict=True)
    path.write_text(json.dumps({"images": {"a.jpg": {"img_w": 640.0, "img_h": 480}}}))
    assert formats.load_annotations(path, strict=True)["a.jpg"].width == 640


@pytest.mark.parametrize("token", ["1\u0663", "\u0661\u0660", "1_0", "True", "0x10", "1,5"])
def test_csv_coordinate_that_is_no_ascii_number_is_an_error_naming_file_row_image(token, tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text(HEADER + f'a.jpg,{QUAD}\nb.jpg,"{QUAD}|10 {token} 50 10 50 30 10 30"\n', encoding="utf-8")
    _raises(lambda: formats.read_submission(path), "sub.csv", "row 3 image 'b.jpg' polygon 2", repr(token))
    (issue,) = submission.validate_submission(path).errors
    assert issue.filename == "b.jpg" and f"found {token!r}" in issue.message


@pytest.mark.parametrize("token", ["nan", "inf", "-Infinity", "1e400"])
def test_csv_nan_or_inf_skips_the_polygon_with_a_warning_as_json_does(token, tmp_path, caplog):
    gt = tmp_path / "gt.json"
    gt.write_text(_gt_doc({"a.jpg": {"0001": _box(10, 10, 50, 30), "0002": _box(100, 10, 140, 30)}}))
    bad = f"100 10 140 {token} 140 30 100 30"
    csv_path = tmp_path / "sub.csv"
    csv_path.write_text(HEADER + f"a.jpg,{QUAD}|{bad}\n")
    json_path = tmp_path / "pred.json"
    json_path.write_text(
        json.dumps(
            {
                "images": {
                    "a.jpg": {
                        "words": {
                            "0001": {"points": _box(10, 10, 50, 30)},
                            "0002": {"points": [[100, 10], [140, float(token)], [140, 30], [100, 30]]},
                        }
                    }
                }
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        from_csv = formats.load_predictions(csv_path)
        from_json = formats.load_predictions(json_path)
    assert f"{csv_path}: row 2 image 'a.jpg' polygon 2: points contain NaN or infinity; skipped" in caplog.text
    assert f"{json_path}: image 'a.jpg' word '0002': points contain NaN or infinity; skipped" in caplog.text
    gt_polys = {n: a.polygons() for n, a in formats.load_annotations(gt).items()}
    assert evaluate(gt_polys, from_csv).to_dict() == evaluate(gt_polys, from_json).to_dict()
    assert len(from_csv["a.jpg"]) == 1


# ============================================================================ reproducers


def test_csv_row_of_6000_polygons_is_read_and_scored_up_to_500(tmp_path, capsys, caplog):
    gt = tmp_path / "gt.json"
    gt.write_text(_gt_doc({"a.jpg": {"0001": _box(10, 10, 50, 30)}, "b.jpg": {"0001": _box(10, 10, 50, 30)}}))
    far = "600 600 640 600 640 620 600 620"
    row = "|".join([QUAD] + [far] * 5999)
    assert len(row) > 131_072
    long_csv = tmp_path / "long.csv"
    long_csv.write_text(HEADER + f"a.jpg,{row}\nb.jpg,{QUAD}\n")
    cut_csv = tmp_path / "cut.csv"
    cut_csv.write_text(HEADER + f"a.jpg,{'|'.join(row.split('|')[:500])}\nb.jpg,{QUAD}\n")
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        assert cli(["eval", "--gt", str(gt), "--pred", str(long_csv), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert f"{long_csv}: image 'a.jpg' has 6000 polygons; the scorer reads only the first 500" in caplog.text
    assert cli(["eval", "--gt", str(gt), "--pred", str(cut_csv), "--json"]) == 0
    assert scored == json.loads(capsys.readouterr().out)
    assert scored["per_image"]["a.jpg"]["num_det"] == 500 and scored["per_image"]["b.jpg"]["hmean"] == 1.0

    report = submission.validate_submission(long_csv)
    assert report.valid and report.rows == 2, [str(i) for i in report.errors]
    assert any("6000 polygons; the scorer only reads the first 500" in str(w) for w in report.warnings)


def test_csv_listing_an_image_twice_is_an_error_naming_file_row_image(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(_gt_doc({"a.jpg": {"0001": _box(10, 10, 50, 30)}, "b.jpg": {}}))
    path = tmp_path / "twice.csv"
    path.write_text(HEADER + f"a.jpg,{QUAD}\nb.jpg,\na.jpg,\n")
    _raises(lambda: formats.read_submission(path), "twice.csv", "row 4", "'a.jpg'", "more than once", "row 2")
    assert cli(["eval", "--gt", str(gt), "--pred", str(path)]) == 2
    err = capsys.readouterr().err
    assert "hrnet_sweep eval: error:" in err and "twice.csv: row 4: image 'a.jpg' is listed more than once" in err


def test_validate_submission_on_a_directory_says_so(tmp_path, capsys):
    assert cli(["validate-submission", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a directory, not a regular file" in err and "not found" not in err


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.jpg", "sub/../../outside.jpg"])
def test_image_key_outside_the_images_folder_warns_naming_file_and_key(name, tmp_path, caplog):
    path = tmp_path / "gt.json"
    path.write_text(_gt_doc({"ok.jpg": {}, "sub/../ok.jpg": {}, name: {"0001": _box(0, 0, 40, 10)}}))
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        anns = formats.load_annotations(path)
    assert list(anns) == ["ok.jpg", "sub/../ok.jpg", name]
    hits = [r.getMessage() for r in caplog.records if "outside the images folder" in r.getMessage()]
    assert hits == [
        f"{path}: image {name!r}: the name is an absolute path or leaves the images folder ('..'); "
        "the image is read from outside the images folder"
    ]
    with pytest.raises(DataError, match="outside the images folder"):
        formats.load_annotations(path, strict=True)


# ============================================================ the metric reads what the competition reads

ZERO_AREA_GT = {"0001": _box(0, 0, 40, 10), "0002": [[100, 0], [130, 0], [160, 0], [190, 0]]}


def test_zero_area_gt_word_is_scored_as_the_competition_does(tmp_path, capsys, caplog):
    """GT: a 40x10 box and a word on a line; prediction: the box only. The competition
    counts the line as 100 pseudo characters: recall 4 / 104 = 0.0385, H-Mean 0.074."""
    gt = tmp_path / "gt.json"
    gt.write_text(_gt_doc({"a.jpg": ZERO_AREA_GT}))
    pred = tmp_path / "pred.json"
    pred.write_text(_gt_doc({"a.jpg": {"0001": _box(0, 0, 40, 10)}}))
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.formats"):
        anns = formats.load_annotations(gt)
    assert [w.key for w in anns["a.jpg"].words] == ["0001", "0002"] and not anns["a.jpg"].words[1].has_area
    assert f"{gt}: image 'a.jpg' word '0002': zero area; kept" in caplog.text
    result = evaluate({n: a.polygons() for n, a in anns.items()}, formats.load_predictions(pred))
    image = result.per_image["a.jpg"]
    assert (image["num_char_gt"], image["num_char_tp"]) == (104, 4)
    assert result.recall == pytest.approx(4 / 104) and round(result.recall, 4) == 0.0385
    assert result.precision == 1.0 and round(result.hmean, 3) == 0.074

    assert cli(["eval", "--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["recall"] == pytest.approx(4 / 104) and printed["hmean"] == pytest.approx(2 * 4 / 108)
    csv_path = tmp_path / "pred.csv"
    csv_path.write_text(HEADER + "a.jpg,0 0 40 0 40 10 0 10\n")
    assert cli(["eval", "--gt", str(gt), "--pred", str(csv_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == printed


def test_bowtie_gt_and_zero_area_detection_are_scored_as_the_competition_does():
    box = np.array(_box(0, 0, 40, 10), float)
    bowtie = np.array([[200, 0], [230, 10], [230, 0], [200, 10]], float)
    line = np.array(ZERO_AREA_GT["0002"], float)
    gt_bowtie = evaluate({"a": [box, bowtie]}, {"a": [box]}).per_image["a"]
    assert (gt_bowtie["num_char_gt"], gt_bowtie["num_char_tp"]) == (4 + 3, 4)
    fp_line = evaluate({"a": [box]}, {"a": [box, line]}).per_image["a"]
    assert (fp_line["num_char_fp"], fp_line["num_char_det"], fp_line["precision"]) == (100, 104, 4 / 104)


DEGENERATE = {
    "one point": [[50, 5]] * 4,
    "two points": [[50, 5], [50, 5], [60, 5], [60, 5]],
    "vertical line": [[20, 0], [20, 3], [20, 6], [20, 9]],
    "line of 6 points": [[0, 5], [8, 5], [16, 5], [24, 5], [32, 5], [40, 5]],
    "diagonal on the box": [[0, 0], [10, 2.5], [20, 5], [40, 10]],
}


@pytest.mark.parametrize(
    "shape, convention",
    [
        (shape, convention)
        for shape in DEGENERATE
        for convention in ("competition", "cleval")
        if convention == "competition" or len(DEGENERATE[shape]) == 4
    ],
)
def test_metric_takes_zero_area_polygons_on_either_side_without_failing(shape, convention):
    box = np.array(_box(0, 0, 40, 10), float)
    degenerate = np.array(DEGENERATE[shape], float)
    for gt, det in (([box, degenerate], [box]), ([box], [box, degenerate]), ([degenerate], [degenerate])):
        image = evaluate({"a": gt}, {"a": det}, convention=convention).per_image["a"]
        assert all(np.isfinite(v) for v in image.values()), image
        assert 0.0 <= image["precision"] <= 1.0 and 0.0 <= image["recall"] <= 1.0


def test_gt_is_rounded_from_float64_as_the_competition_rounds_it(tmp_path):
    """x = 1000.50002 is 1001 to np.round of float64; a float32 cast first makes it 1000.5,
    then 1000. A 4 x 4 GT box (1 pseudo character) would become 5 x 4 (2)."""
    gt = tmp_path / "gt.json"
    gt.write_text(
        '{"images": {"a.jpg": {"words": {"0001": {"points": '
        "[[1000.50002, 0], [1005, 0], [1005, 4], [1000.50002, 4]]}}}}}"
    )
    (word,) = formats.load_annotations(gt)["a.jpg"].words
    assert word.points.dtype == np.float64 and word.points[0, 0] == 1000.50002
    assert _pack([word.points], round_points=True).raw[0, 0, 0] == 1001
    assert formats.integer_points(word.points)[0, 0] == 1001
    as_read = evaluate({"a": [word.points]}, {"a": []}).per_image["a"]["num_char_gt"]
    rounded = {
        x0: evaluate({"a": [np.array(_box(x0, 0, 1005, 4), float)]}, {"a": []}).per_image["a"]["num_char_gt"]
        for x0 in (1001, 1000)
    }
    assert as_read == rounded[1001] == 1 and rounded[1000] == 2


# ============================================================================ the references the tests compare with


def test_postprocess_reference_clamps_to_w_and_h_as_the_paper_does():
    prob = np.zeros((40, 60), np.float32)
    prob[10:30, 30:60] = 1.0  # touching the right border: unclipping goes past it
    (poly,), _ = bench.reference_postprocess(prob, box_thresh=0.5)
    assert poly[:, 0].max() == 60 and poly[:, 0].min() >= 0
    ours_convention = poly.copy()
    ours_convention[:, 0] = np.minimum(ours_convention[:, 0], 59)
    assert bench.max_polygon_diff([ours_convention], [poly]) == 1.0
    assert bench.max_polygon_diff([ours_convention], [poly], prob.shape) == 0.0
    assert bench.border_clamped([ours_convention], [poly], prob.shape) == 2
