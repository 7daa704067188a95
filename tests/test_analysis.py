"""`analyze` / `compare`: counts on constructed predictions, JSON and CSV inputs, the files
written, the worst and the most disagreeing image; one run on sroie-mini when present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hrnet_sweep import cli
from hrnet_sweep.analysis import Rules, analyze, box_geometry, compare, count_outliers, error_types, image_flags
from hrnet_sweep.analysis._rules import count_limits
from hrnet_sweep.errors import DataError, UserError
from hrnet_sweep.formats import save_predictions, write_submission

SIZE = 1000


def rect(x, y, w, h) -> np.ndarray:
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)


def split4(box: np.ndarray) -> list[np.ndarray]:
    x, y = box[0]
    w, h = box[2] - box[0]
    return [rect(x + k * w / 4 + 1, y, w / 4 - 2, h) for k in range(4)]


def gt_words(image: int) -> list[np.ndarray]:
    """Ten 100x20 words in two columns; image 4 has three small (100x10) ones."""
    words = [rect(100 + 300 * (k % 2), 100 + 60 * (k // 2), 100, 20) for k in range(10)]
    if image == 4:
        words[7:] = [rect(b[0, 0], b[0, 1], 100, 10) for b in words[7:]]
    return words


GT = {f"img_{i}.jpg": gt_words(i) for i in range(6)}


def constructed_predictions() -> dict[str, list[np.ndarray]]:
    """Known content per image (box counts 11, 12, 11, 12, 1, 40):

    img_0  perfect + one triangle (3 points)
    img_1  perfect + 2 tiny 5x5 boxes away from the text   -> 2 tiny, 2 false positives
    img_2  perfect + one 600x400 box over the text         -> 1 huge, 1 merged
    img_3  perfect + a 500x10 and a 5x100 box away          -> 2 extreme aspect, 2 false positives
    img_4  one word found                                   -> too few, 9 missed (3 small), worst
    img_5  every word split in four                         -> too many, 10 split
    """
    p = {n: list(v) for n, v in GT.items()}
    p["img_0.jpg"].append(np.array([[700, 800], [760, 800], [730, 850]], np.float32))
    p["img_1.jpg"] += [rect(800, 900, 5, 5), rect(900, 900, 5, 5)]
    p["img_2.jpg"].append(rect(50, 50, 600, 400))
    p["img_3.jpg"] += [rect(100, 700, 500, 10), rect(900, 600, 5, 100)]
    p["img_4.jpg"] = p["img_4.jpg"][:1]
    p["img_5.jpg"] = [q for box in p["img_5.jpg"] for q in split4(box)]
    return p


def write_gt(path: Path, polys=GT) -> Path:
    images = {}
    for name, words in polys.items():
        images[name] = {
            "img_w": SIZE,
            "img_h": SIZE,
            "words": {f"{k:04d}": {"points": p.tolist()} for k, p in enumerate(words, 1)},
        }
    path.write_text(json.dumps({"images": images}))
    return path


def write_preds(path: Path, preds) -> Path:
    if path.suffix == ".csv":
        return write_submission(path, preds)
    return save_predictions(path, {n: [(p, 0.9) for p in v] for n, v in preds.items()})


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- pure rules


@pytest.mark.unit
def test_box_geometry_width_is_the_side_nearer_horizontal():
    w, h, area = box_geometry(rect(0, 0, 100, 20))
    assert (round(w), round(h), round(area)) == (100, 20, 2000)
    w, h, _ = box_geometry(rect(0, 0, 5, 100))  # a vertical sliver: aspect 0.05
    assert (round(w), round(h)) == (5, 100)
    theta = np.deg2rad(30)  # rotated 30 degrees: still 100 wide, 20 high
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    w, h, _ = box_geometry(rect(0, 0, 100, 20) @ rot.T)
    assert w == pytest.approx(100, abs=0.5) and h == pytest.approx(20, abs=0.5)


@pytest.mark.unit
def test_image_flags_counts():
    rules = Rules()
    polys = [
        rect(0, 0, 100, 20),
        rect(0, 0, 10, 10),
        rect(0, 0, 11, 5),
        rect(0, 0, 700, 30),
        rect(0, 0, 30, 300),
        rect(0, 0, 210, 10),
        rect(0, 0, 9, 100),
        np.array([[0, 0], [10, 0], [5, 9]], np.float32),
        np.array([[0, 0], [10, 0]], np.float32),
    ]
    f = image_flags(polys, (1000, 1000), rules)
    assert f["tiny"] == [1]  # 11x5 is not tiny: one side > 10
    assert f["huge"] == [3]  # longer side 700 > 500; 30x300 is neither 5% of the area nor > 500 long
    assert f["extreme_aspect"] == [3, 5, 6]  # 700/30 = 23.3, 210/10 = 21, 9/100 = 0.09
    assert f["under_4_points"] == [7, 8]
    assert f["measured"] == list(range(8))  # the 2-point one has no geometry
    assert image_flags(polys, None, rules)["huge"] is None
    many = image_flags([rect(0, 0, 50, 20)] * 502, (1000, 1000), rules)
    assert many["over_cap"] == 2


@pytest.mark.unit
def test_count_outliers_ratio_to_median():
    counts = {"a": 40, "b": 38, "c": 42, "d": 9, "e": 0, "f": 121, "g": 120}
    out = count_outliers(counts, Rules())
    assert out["median"] == 40 and out["few_below"] == 10 and out["many_above"] == 120
    assert out["few"] == ["e", "d"] and out["many"] == ["f"]
    # the limits in whole boxes, as the plot title and the report state them
    assert count_limits(out["few_below"], out["many_above"]) == ("9 or fewer", "121 or more")
    assert count_limits(7.125, 85.5) == ("7 or fewer", "86 or more")
    assert count_limits(0.0, 3.0)[0] == "never"


@pytest.mark.unit
def test_error_types_on_constructed_boxes():
    gt = [
        rect(0, 0, 100, 20),
        rect(200, 0, 100, 20),
        rect(400, 0, 100, 20),
        rect(600, 0, 100, 12),
        rect(0, 100, 100, 20),
    ]
    det = [
        rect(0, 0, 48, 20),
        rect(52, 0, 48, 20),  # gt 0 split in two
        rect(195, -5, 310, 30),  # merges gt 1 and gt 2
        rect(0, 300, 50, 20),  # false positive
        rect(0, 100, 100, 20),
    ]  # gt 4 found; gt 3 (small, 12 px) missed
    e = error_types(gt, det, Rules())
    assert e == {"missed": [3], "missed_small": [3], "split": [0], "merged": [2], "false_positive": [3]}
    assert error_types(gt, [], Rules())["missed"] == [0, 1, 2, 3, 4]
    assert error_types([], det, Rules())["false_positive"] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- analyze


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Numbers only (plots=False keeps these unit tests fast); the PNGs are tested below."""
    tmp = tmp_path_factory.mktemp("analyze")
    gt = write_gt(tmp / "gt.json")
    preds = write_preds(tmp / "pred.json", constructed_predictions())
    return tmp, gt, analyze(preds, gt_path=gt, out_dir=tmp / "out", worst=3, plots=False)


@pytest.mark.unit
def test_analyze_counts(analysed):
    _, _, report = analysed
    s = report.summary
    assert s["images"]["total"] == 6
    assert s["boxes"]["total"] == 11 + 12 + 11 + 12 + 1 + 40
    assert (s["boxes"]["median"], s["boxes"]["min"], s["boxes"]["max"]) == (11.5, 1, 40)
    assert sum(s["boxes"]["histogram"]["counts"]) == 6
    assert s["count_outliers"]["few"] == ["img_4.jpg"] and s["count_outliers"]["many"] == ["img_5.jpg"]
    flags = {f: (v["boxes"], v["images"]) for f, v in s["flags"].items()}
    assert flags == {
        "tiny": (2, 1),
        "huge": (1, 1),
        "extreme_aspect": (2, 1),
        "under_4_points": (1, 1),
        "over_cap": (0, 0),
    }
    errors = {e: v["total"] for e, v in s["errors"].items()}
    assert errors == {"missed": 9, "missed_small": 3, "split": 10, "merged": 1, "false_positive": 4}
    per = report.per_image
    assert per["img_1.jpg"]["false_positive"] == 2 and per["img_3.jpg"]["false_positive"] == 2
    assert per["img_0.jpg"]["hmean"] == pytest.approx(1.0)  # the triangle is not scored
    assert 0 < per["img_4.jpg"]["recall"] < 0.15  # CLEval weighs words by pseudo characters


@pytest.mark.unit
def test_analyze_worst_image(analysed):
    tmp, _, report = analysed
    assert report.worst[0] == "img_4.jpg" and len(report.worst) == 3
    assert report.worst == sorted(report.worst, key=lambda n: (report.per_image[n]["hmean"], n))
    saved = json.loads((tmp / "out" / "summary.json").read_text())
    assert saved["worst"][0]["image"] == "img_4.jpg" and saved["errors"]["split"]["total"] == 10
    assert "`img_4.jpg`" in (tmp / "out" / "report.md").read_text()


@pytest.mark.integration
def test_analyze_writes_report_and_pngs(analysed, tmp_path):
    src, gt, _ = analysed
    out = tmp_path / "out"
    (out).mkdir()
    (out / "worst_09_old.png").write_bytes(b"stale")  # from an earlier run with --worst 9
    report = analyze(src / "pred.json", gt_path=gt, out_dir=out, worst=2)
    for name in ("boxes_per_image.png", "box_geometry.png", "hmean_per_image.png", "worst_01_img_4.png"):
        assert is_png(out / name), name
    second = f"worst_02_{Path(report.worst[1]).stem}.png"
    assert sorted(p.name for p in out.glob("worst_*.png")) == ["worst_01_img_4.png", second]
    md = (out / "report.md").read_text()
    for png in out.glob("*.png"):
        assert f"({png.name})" in md
    assert all(p.is_file() for p in report.files)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    flagged = analyze(src / "pred.json", out_dir=tmp_path / "nogt", worst=1)  # without GT: the flagged images
    assert is_png(tmp_path / "nogt" / f"flagged_01_{Path(flagged.worst[0]).stem}.png")


@pytest.mark.unit
def test_csv_and_json_agree(analysed, tmp_path):
    tmp, gt, report = analysed
    csv = write_preds(tmp_path / "submission.csv", constructed_predictions())
    from_csv = analyze(csv, gt_path=gt, out_dir=tmp_path / "out", plots=False)
    for key in ("boxes", "flags", "count_outliers", "errors"):
        assert from_csv.summary[key] == report.summary[key], key
    assert from_csv.summary["metric"]["hmean"] == pytest.approx(report.summary["metric"]["hmean"], abs=1e-9)


@pytest.mark.unit
def test_analyze_without_gt(tmp_path):
    csv = write_preds(tmp_path / "submission.csv", constructed_predictions())
    report = analyze(csv, out_dir=tmp_path / "out", worst=2, plots=False)
    s = report.summary
    assert s["metric"] is None and s["errors"] is None
    assert s["flags"]["huge"]["images_checked"] == 0  # a CSV carries no image size
    assert s["flags"]["tiny"]["boxes"] == 2 and s["flags"]["extreme_aspect"]["boxes"] == 2
    assert report.worst == ["img_4.jpg", "img_5.jpg"]  # too few / too many come first
    assert s["worst_by"] == "flags"
    assert "--images" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.unit
def test_missing_images_and_unreadable_words(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    preds = {n: v for n, v in constructed_predictions().items() if n != "img_2.jpg"}
    path = write_preds(tmp_path / "pred.json", preds)
    doc = json.loads(path.read_text())
    doc["images"]["img_0.jpg"]["words"]["9999"] = {"points": [[1, 1], [5, 5]]}
    doc["images"]["extra.jpg"] = {"words": {}}
    path.write_text(json.dumps(doc))
    s = analyze(path, gt_path=gt, out_dir=tmp_path / "out", plots=False).summary
    assert s["images"]["missing_from_predictions"] == ["img_2.jpg"]
    assert s["images"]["not_in_ground_truth"] == ["extra.jpg"]
    assert s["per_image"]["img_2.jpg"]["hmean"] == 0 and s["per_image"]["img_2.jpg"]["boxes"] == 0
    assert s["unreadable"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.md", "summary.json"]
    assert ".png" not in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.unit
def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        analyze(tmp_path / "nope.json", out_dir=tmp_path / "out")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match="submission .csv"):
        analyze(tmp_path / "p.txt", out_dir=tmp_path / "out")
    with pytest.raises(UserError, match="worst=-1"):
        analyze(tmp_path / "p.txt", out_dir=tmp_path / "out", worst=-1)


@pytest.mark.unit
def test_cli_analyze(analysed, tmp_path, capsys):
    tmp, gt, _ = analysed
    assert (
        cli.main(["analyze", str(tmp / "pred.json"), "--gt", str(gt), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    )
    out = capsys.readouterr().out
    assert "img_4.jpg" in out and str(tmp_path / "o" / "report.md") in out
    assert cli.main(["analyze", str(tmp_path / "missing.csv")]) == 2


# ----------------------------------------------------------------------------- compare


def two_models(tmp: Path) -> tuple[Path, Path]:
    """A is the ground truth; B equals it except on img_3, where it keeps 2 of 10 words,
    and img_1, where it adds one false positive."""
    b = {n: list(v) for n, v in GT.items()}
    b["img_3.jpg"] = b["img_3.jpg"][:2]
    b["img_1.jpg"].append(rect(800, 900, 60, 20))
    return write_preds(tmp / "a.json", GT), write_preds(tmp / "b.csv", b)


@pytest.mark.parametrize(
    "with_gt", [pytest.param(True, marks=pytest.mark.integration), pytest.param(False, marks=pytest.mark.unit)]
)
def test_compare_picks_the_most_disagreeing_image(tmp_path, with_gt):
    a, b = two_models(tmp_path)
    gt = write_gt(tmp_path / "gt.json") if with_gt else None
    report = compare([a, b], gt_path=gt, out_dir=tmp_path / "cmp", top=2, plots=with_gt)
    s = report.summary
    assert report.most_disagreeing == ["img_3.jpg", "img_1.jpg"]
    assert s["per_image"]["img_3.jpg"]["box_diff"] == {"b": -8}
    assert s["per_image"]["img_0.jpg"]["disagreement"] == pytest.approx(0.0)
    d = s["differences"]["b"]
    assert (d["more_boxes"], d["fewer_boxes"], d["same_boxes"]) == (1, 1, 4)
    if with_gt:
        assert s["models"]["a"]["metric"]["hmean"] == pytest.approx(1.0)
        assert (d["better"], d["worse"], d["same"]) == (0, 2, 4)
    out = tmp_path / "cmp"
    if with_gt:
        for name in ("compare_boxes_per_image.png", "compare_per_image.png", "disagree_01_img_3.png"):
            assert is_png(out / name), name
        assert "(disagree_01_img_3.png)" in (out / "report.md").read_text()
    else:
        assert "`img_3.jpg`" in (out / "report.md").read_text() and not list(out.glob("*.png"))


@pytest.mark.unit
def test_compare_names_and_errors(tmp_path, capsys):
    a, b = two_models(tmp_path)
    with pytest.raises(UserError, match="two or more"):
        compare([a], out_dir=tmp_path / "x")
    with pytest.raises(UserError, match="unique"):
        compare([a, b], names=["m", "m"], out_dir=tmp_path / "x")
    assert cli.main(["compare", str(a), str(b), "--names", "base,new", "--out", str(tmp_path / "c"), "--no-plots"]) == 0
    assert "img_3.jpg" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["inputs"]["names"] == ["base", "new"]


# ----------------------------------------------------------------------------- real data

SROIE = Path(os.environ.get("HRNET_SWEEP_SROIE", Path(__file__).resolve().parents[1].parent / "shared/data/sroie-mini"))


@pytest.mark.integration
@pytest.mark.skipif(not (SROIE / "val.json").is_file(), reason=f"sroie-mini not found at {SROIE}")
def test_sroie_mini_jittered(tmp_path):
    from hrnet_sweep.formats import load_annotations

    rng = np.random.default_rng(0)
    gt = load_annotations(SROIE / "val.json")
    preds = {}
    for i, (name, ann) in enumerate(gt.items()):
        polys = [p + rng.normal(0, 1.5, 2).astype(np.float32) for p in ann.polygons()]
        preds[name] = polys[: len(polys) // 3] if i == 5 else polys  # one image loses 2/3 of its words
    path = write_preds(tmp_path / "pred.csv", preds)
    report = analyze(path, gt_path=SROIE / "val.json", images_dir=SROIE / "images", out_dir=tmp_path / "out", worst=2)
    assert report.worst[0] == list(gt)[5]
    assert report.summary["images"]["size_known"] == len(gt)
    assert report.summary["errors"]["missed"]["total"] >= len(gt[list(gt)[5]].words) * 2 // 3 - 1
    assert is_png(tmp_path / "out" / f"worst_01_{Path(list(gt)[5]).stem}.png")
