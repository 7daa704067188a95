"""CLEval detection metric: formulas, conventions, aggregation, CLI, and agreement with the
`cleval` package (the oracle; those tests skip where it is not installed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import reference_metric as bench

from hrnet_sweep import metric
from hrnet_sweep.errors import DataError
from hrnet_sweep.metric import evaluate, evaluate_image, pseudo_char_counts
from hrnet_sweep.metric._pairs import _convex_pair_areas, _points_inside
from hrnet_sweep.metric._polygons import _convex_orientation

pytestmark = pytest.mark.unit
EPS32 = float(np.finfo(np.float32).eps)

# word boxes, detection noise and the package oracle are shared with the benchmark
rect, split, merge, noisy = bench.rect, bench.split, bench.merge, bench.noisy


def rotate(poly, angle, center=(300.0, 300.0)):
    c, s = math.cos(angle), math.sin(angle)
    return (np.asarray(poly) - center) @ np.array([[c, -s], [s, c]]).T + center


def receipt(rng, n_words, *, angle=0.0, integer=False):
    """Receipt-like word boxes (the benchmark's rows of 1-5 words), optionally tilted and rounded."""
    boxes = bench.receipt_rows(rng, n_words)
    boxes = [rotate(b, angle) for b in boxes] if angle else boxes
    return [np.round(b) for b in boxes] if integer else boxes


def shrink(box, f):
    c = box.mean(0)
    return c + (box - c) * f


# ----------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("w,h", [(100, 20), (20, 100), (35, 10), (13, 10), (250, 10), (1000, 5), (3, 7)])
@pytest.mark.parametrize("angle", [0.0, 0.4])
def test_pseudo_char_count_formula(w, h, angle):
    # min(round(0.5 + max(ar, 1/ar)), 100); the competition's float32 epsilon puts an exact
    # integer ratio n just below n + 0.5, so it counts n (a square counts 1)
    ratio = max(w, h) / min(w, h)
    expected = min(round(0.5 + ratio - 1e-6), 100)
    poly = rotate(rect(100, 100, w, h), angle)
    assert pseudo_char_counts([poly])[0] == expected
    assert pseudo_char_counts([poly], cap=10)[0] == min(expected, 10)


def test_pseudo_char_count_cleval_convention_uses_sides():
    # the package reads the quad's sides in point order: top/bottom over left/right
    assert pseudo_char_counts([rect(0, 0, 80, 20)], cap=10, convention="cleval")[0] == 4
    # a square: the package has no epsilon, so round(1.5) = 2; the competition counts 1
    assert pseudo_char_counts([rect(0, 0, 10, 10)], convention="cleval")[0] == 2
    assert pseudo_char_counts([rect(0, 0, 10, 10)])[0] == 1
    assert pseudo_char_counts([rect(0, 0, 500, 10)], cap=10, convention="cleval")[0] == 10
    with pytest.raises(ValueError, match="4 or more"):
        pseudo_char_counts([rect(0, 0, 10, 10)[:3]])


def test_degenerate_gt_gets_the_cap():
    flat = np.array([[0, 0], [50, 0], [100, 0], [20, 0]], dtype=float)  # qhull fails: counts hit the cap
    assert pseudo_char_counts([flat])[0] == 100


def test_points_inside_follows_polygon3_half_open_rule():
    ring = np.repeat(rect(0, 0, 10, 10).T[:, :, None], 6, axis=2)
    px = np.array([0.0, 10.0, 5.0, 5.0, 5.0, -0.5])
    py = np.array([5.0, 5.0, 0.0, 10.0, 5.0, 5.0])
    assert _points_inside(px, py, ring).tolist() == [True, False, True, False, True, False]


def test_convex_pair_areas_match_shapely():
    shapely = pytest.importorskip("shapely")
    rng = np.random.default_rng(3)
    A = [rect(0, 0, 10, 10)] * 6 + [np.round(rotate(rect(0, 0, 40, 12), a, (20, 6))) for a in rng.uniform(0, 3, 40)]
    B = [
        rect(0, 0, 10, 10),
        rect(0, 10, 10, 10),
        rect(5, 0, 10, 10),
        rect(10, 10, 5, 5),
        rect(2, 2, 3, 3),
        rect(0, 0, 10, 10)[::-1],
    ]
    B += [np.round(rotate(rect(*rng.uniform(-5, 20, 2), 30, 10), a, (20, 6))) for a in rng.uniform(0, 3, 40)]
    A, B = np.array(A).transpose(2, 1, 0), np.array(B).transpose(2, 1, 0)
    k = np.full(A.shape[2], 4)
    oA, oB = _convex_orientation(A, k), _convex_orientation(B, k)
    assert (oA != 0).all() and (oB != 0).all()
    ours = _convex_pair_areas(A, oA.astype(float), B, oB.astype(float))
    ref = shapely.area(
        shapely.intersection(shapely.polygons(A.transpose(2, 1, 0)), shapely.polygons(B.transpose(2, 1, 0)))
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
    assert ours[:6].tolist() == [100.0, 0.0, 50.0, 0.0, 9.0, 100.0]


# ----------------------------------------------------------------------------- conventions and edge cases


def test_perfect_and_empty_images():
    boxes = receipt(np.random.default_rng(0), 12, integer=True)
    perfect = evaluate_image(boxes, boxes)
    assert (perfect.precision, perfect.recall, perfect.hmean) == (1.0, 1.0, 1.0)
    assert perfect.num_char_tp == perfect.num_char_gt == perfect.num_char_det

    both_empty = evaluate_image([], [])
    no_det = evaluate_image(boxes, [])
    no_gt = evaluate_image([], boxes)
    for r in (both_empty, no_det, no_gt):  # CLEval: no characters on a side -> 0, not 1
        assert (r.precision, r.recall, r.hmean) == (0.0, 0.0, 0.0)
    assert no_det.num_char_gt == perfect.num_char_gt and no_det.num_char_det == 0
    assert no_gt.num_char_gt == 0 and no_gt.num_char_fp == no_gt.num_char_det > 0


def test_short_polygons_are_skipped():
    gt = [rect(0, 0, 60, 20), rect(0, 0, 60, 20)[:3]]
    r = evaluate_image(gt, [rect(0, 0, 60, 20), np.zeros((2, 2))])
    assert (r.num_gt, r.num_det, r.hmean) == (1, 1, 1.0)


def test_more_than_four_points():
    top = [[0, 0], [30, 0], [60, 0], [90, 0]]
    bottom = [[90, 20], [60, 20], [30, 20], [0, 20]]
    octagon = np.array(top + bottom, dtype=float)
    assert pseudo_char_counts([octagon])[0] == 5
    r = evaluate_image([octagon], [octagon])
    assert (r.precision, r.recall, r.hmean) == (1.0, 1.0, 1.0)
    r = evaluate_image([octagon], [rect(0, 0, 90, 20)])
    assert r.hmean == 1.0
    # a non-convex detection (U shape) goes through the general clipper
    u_shape = np.array([[0, 0], [90, 0], [90, 20], [60, 20], [60, 8], [30, 8], [30, 20], [0, 20]], dtype=float)
    r = evaluate_image([octagon], [u_shape])
    assert 0 < r.recall < 1 and r.num_det == 1
    # five points: the bottom line takes the middle point, as the competition's code does
    pent = np.array([[0, 0], [90, 0], [90, 20], [45, 22], [0, 20]], dtype=float)
    assert evaluate_image([pent], [pent]).hmean == 1.0
    with pytest.raises(ValueError, match="quadrilaterals only"):
        evaluate_image([octagon], [octagon], convention="cleval")


def test_max_detections_cap():
    gt = [rect(0, 0, 60, 20)]
    dets = [np.zeros((2, 2))] * 3 + [rect(500, 500, 30, 10)] * 497 + [rect(0, 0, 60, 20)]
    capped = evaluate_image(gt, dets)  # the 501st (the only hit) is dropped; short ones still count
    assert capped.num_det == 497 and capped.recall == 0.0
    uncapped = evaluate_image(gt, dets, max_detections=None)
    assert uncapped.num_det == 498 and uncapped.recall == 1.0


def test_macro_vs_micro_and_missing_images():
    big = [rect(0, 30 * i, 100, 20) for i in range(9)]  # 9 boxes of 5 characters
    small = [rect(0, 0, 100, 20)]
    gt = {"a.jpg": big, "b.jpg": small, "c.jpg": small}
    pred = {"a.jpg": big, "b.jpg": [], "extra.jpg": small}  # c.jpg missing; extra.jpg ignored
    res = evaluate(gt, pred)
    assert res.per_image["a.jpg"]["hmean"] == 1.0
    assert res.per_image["b.jpg"]["hmean"] == res.per_image["c.jpg"]["hmean"] == 0.0
    assert res.hmean == pytest.approx(1 / 3) and res.recall == pytest.approx(1 / 3)
    assert res.micro["recall"] == pytest.approx(45 / 55) and res.micro["precision"] == 1.0
    assert res.micro["num_images"] == 3 and res.micro["num_char_gt"] == 55
    assert res.ignored_images == ["extra.jpg"]
    out = res.to_dict()
    assert set(out) == {"precision", "recall", "hmean", "micro", "per_image"}
    json.dumps(out)
    assert evaluate({}, {}).hmean == 0.0


def test_split_merge_and_penalties():
    a, b = rect(0, 0, 100, 20), rect(110, 0, 100, 20)
    s = evaluate_image([a], split(a))
    assert (s.num_splitted, s.gran_recall, s.num_char_tp) == (1, 1.0, 5)
    assert s.recall == pytest.approx(4 / 5) and s.precision == 1.0
    m = evaluate_image([a, b], [merge(a, b)])
    assert (m.num_merged, m.gran_precision) == (1, 1.0)
    assert m.recall == 1.0 and m.precision == pytest.approx(9 / 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pseudo_char_cap": 0},
        {"pseudo_char_cap": 2.5},
        {"area_precision_constraint": 1.5},
        {"granularity_penalty": -1},
        {"max_detections": -1},
        {"convention": "icdar"},
    ],
)
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        evaluate_image([], [], **kwargs)


def test_bad_polygon_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        evaluate_image([rect(0, 0, 10, 10), np.zeros((5, 3))], [])


# ----------------------------------------------------------------------------- CLI


def _write_annotations(path, images):
    doc = {
        "images": {
            name: {"words": {f"{i:04d}": {"points": p.tolist()} for i, p in enumerate(polys)}}
            for name, polys in images.items()
        }
    }
    path.write_text(json.dumps(doc))


def test_cli_json_and_table(tmp_path, capsys):
    from hrnet_sweep import formats as io

    boxes = receipt(np.random.default_rng(1), 10, integer=True)
    _write_annotations(tmp_path / "gt.json", {"a.jpg": boxes, "b.jpg": boxes[:4]})
    io.write_submission(tmp_path / "sub.csv", {"a.jpg": boxes, "b.jpg": []})
    assert metric.main(["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "sub.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"precision", "recall", "hmean", "micro", "per_image"}
    assert out["per_image"]["a.jpg"]["hmean"] == 1.0 and out["hmean"] == 0.5
    _write_annotations(tmp_path / "pred.json", {"a.jpg": boxes})
    assert metric.main(["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"), "--cap", "10"]) == 0
    table = capsys.readouterr().out
    assert "macro" in table and "micro" in table and "worst 2 image(s)" in table and "b.jpg" in table
    with pytest.raises(DataError):
        metric.main(["--gt", str(tmp_path / "missing.json"), "--pred", str(tmp_path / "sub.csv")])


# ----------------------------------------------------------------------------- oracle: the cleval package


def _assert_same(ours, ref):
    assert abs(ours.precision - ref.precision) <= 1e-6
    assert abs(ours.recall - ref.recall) <= 1e-6
    assert abs(ours.hmean - ref.hmean) <= 1e-6
    assert (ours.num_char_gt, ours.num_char_det, ours.num_char_tp, ours.num_char_fp) == (
        ref.num_char_gt,
        ref.num_char_det,
        ref.num_char_tp_recall,
        ref.num_char_fp,
    )
    assert (ours.gran_recall, ours.gran_precision) == (ref.gran_score_recall, ref.gran_score_precision)


def _cases():
    rng = np.random.default_rng(7)
    words = receipt(rng, 30)
    ints = receipt(rng, 30, integer=True)
    tilted = receipt(rng, 30, angle=0.35)
    vertical = [rect(20 + 40 * i, 50, 18, rng.uniform(60, 200)) for i in range(8)]
    fps = [rect(*rng.uniform(0, 500, 2), rng.uniform(5, 90), rng.uniform(5, 90)) for _ in range(6)]
    return {
        "perfect": (words, words),
        "perfect_integer": (ints, ints),
        "dropped": (words, words[::3]),
        "split": (words, [p for b in words for p in split(b, rng.uniform(0.2, 0.8))]),
        "merged": (words, [merge(words[i], words[i + 1]) for i in range(0, 29, 2)]),
        "false_positives": (words[:10], words[:10] + fps),
        "jittered": (words, [b + rng.normal(0, 2.5, (4, 2)) for b in words]),
        "jittered_integer": (ints, [np.round(b + rng.normal(0, 2.0, (4, 2))) for b in ints]),
        "shrunk": (words, [shrink(b, f) for b, f in zip(words, rng.uniform(0.3, 1.0, 30))]),
        "grown": (words, [shrink(b, f) for b, f in zip(words, rng.uniform(1.0, 2.5, 30))]),
        "rotated": (tilted, noisy(rng, tilted)),
        "vertical": (vertical, [b + rng.normal(0, 1.5, (4, 2)) for b in vertical] + [vertical[0][::-1]]),
        "no_gt": ([], words[:5]),
        "no_det": (words, []),
        "empty": ([], []),
        "mixed_noise": (words, noisy(rng, words, p_drop=0.1, p_split=0.1, p_merge=0.1, p_fp=0.2)),
    }


@pytest.mark.oracle
@pytest.mark.parametrize("case", list(_cases()))
def test_matches_cleval_package(case):
    pytest.importorskip("cleval")
    gt, det = _cases()[case]
    ours = evaluate_image(gt, det, pseudo_char_cap=10, convention="cleval")
    _assert_same(ours, bench.package_stats(gt, det))


@pytest.mark.oracle
def test_matches_cleval_package_random_images_macro_and_micro():
    pytest.importorskip("cleval")
    from cleval.data import CoreStats, accumulate_core_stats, calculate_rph

    rng = np.random.default_rng(11)
    gt, pred, refs = {}, {}, {}
    for i in range(8):
        boxes = receipt(
            rng, int(rng.integers(5, 60)), angle=rng.uniform(-0.3, 0.3) if i % 2 else 0.0, integer=i % 3 == 0
        )
        gt[f"{i}.jpg"], pred[f"{i}.jpg"] = boxes, noisy(rng, boxes, jitter=rng.uniform(0.5, 4))
        refs[f"{i}.jpg"] = bench.package_stats(boxes, pred[f"{i}.jpg"])
    res = evaluate(gt, pred, pseudo_char_cap=10, convention="cleval")
    total = CoreStats()
    for name, ref in refs.items():
        _assert_same(metric.ImageResult(**res.per_image[name]), ref)
        accumulate_core_stats(total, ref)
    calculate_rph(total)
    for key in ("precision", "recall", "hmean"):
        assert abs(res.micro[key] - getattr(total, key)) <= 1e-6
        assert abs(getattr(res, key) - np.mean([getattr(r, key) for r in refs.values()])) <= 1e-6


# ----------------------------------------------------------------------------- oracle: the competition's variant


def _slow_min_rect(points):
    """Min-area rectangle over qhull's hull edges, first strict minimum: (along, across).

    Written as the competition's code evaluates it under NumPy 1.x: the edge length from
    float32 arithmetic, unit vectors in float64, one np.dot per hull point.
    """
    from scipy.spatial import ConvexHull

    try:
        hull = [points[i] for i in ConvexHull(points).vertices]
    except Exception:
        return 0.0, 0.0
    hull.append(hull[0])
    best = None
    for i in range(len(hull) - 1):
        diff = hull[i + 1] - hull[i]  # float32
        length = math.sqrt(diff[0] ** 2 + diff[1] ** 2)
        u = (np.float64(diff[0]) / length, np.float64(diff[1]) / length)
        along = [np.dot(np.array(u), p.astype(np.float64)) for p in hull]
        across = [np.dot(np.array((-u[1], u[0])), p.astype(np.float64)) for p in hull]
        w, h = max(along) - min(along), max(across) - min(across)
        if best is None or w * h < best[0]:
            best = (w * h, w, h)
    return best[1], best[2]


class _CompetitionBox:
    """The competition's POLY box, written plainly on Polygon3 (test reference)."""

    orientation = scale = None
    is_dc = False

    def __init__(self, pts, *, gt):
        import Polygon

        pts = np.rint(pts) if gt else np.asarray(pts, dtype=np.float64)
        self.pts = pts
        self.points = pts.reshape(-1).tolist()
        self.polygon = Polygon.Polygon(np.asarray(pts, dtype=np.int32))
        w, h = _slow_min_rect(pts.astype(np.float32))
        self._ar = min(100.0, h / (w + EPS32))
        self.transcription = "#" * min(round(0.5 + max(self._ar, 1 / (self._ar + EPS32))), 100)

    def aspect_ratio(self):
        return self._ar

    def area(self):
        return self.polygon.area()

    def __and__(self, other):
        inter = self.polygon & other.polygon
        return 0.0 if len(inter) == 0 else inter.area()

    def is_inside(self, x, y):
        return self.polygon.isInside(x, y)

    def pseudo_character_center(self, _thresh):
        n = len(self.transcription)
        half = len(self.pts) // 2

        def line(pts):
            out = []
            for a, b in zip(pts[:-1], pts[1:half]):
                out.append(a)
                out += [np.trunc(a + (b - a) / n * step) for step in range(1, n)]
            return out + [pts[-1]]

        top, bottom = line(self.pts[:half]), line(self.pts[half:][::-1])
        sec = (len(top) - 1) / n
        return [
            tuple((top[int(c * sec)] + top[int((c + 1) * sec)] + bottom[int(c * sec)] + bottom[int((c + 1) * sec)]) / 4)
            for c in range(n)
        ]


def _competition_image(gt, det, monkeypatch):
    from cleval import eval_functions

    def fp_chars(det_boxes, det_valid_indices, match_mat_gts_sum):
        return sum(
            min(round(0.5 + 1 / (EPS32 + det_boxes[i].aspect_ratio())), 100)
            for i in det_valid_indices
            if match_mat_gts_sum[i] == 0
        )

    monkeypatch.setattr(eval_functions, "get_num_fp_char", fp_chars)
    gts = [_CompetitionBox(p, gt=True) for p in gt]
    dets = [_CompetitionBox(p, gt=False) for p in det]
    return eval_functions.evaluation(bench.PackageOptions, gts, dets).stats.det


def _polygon(rng, box, n_side):
    """A text polygon with n_side points on its top and bottom (like DBNet's polygon mode)."""
    t = np.linspace(0, 1, n_side)[:, None]
    top = box[0] + t * (box[1] - box[0]) + rng.normal(0, 1.0, (n_side, 2))
    bottom = box[3] + t * (box[2] - box[3]) + rng.normal(0, 1.0, (n_side, 2))
    return np.concatenate([top, bottom[::-1]])


@pytest.mark.oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_competition_variant(seed, monkeypatch):
    pytest.importorskip("cleval")
    rng = np.random.default_rng(seed)
    boxes = receipt(rng, 25, angle=0.25 * seed)
    gt = [_polygon(rng, b, int(rng.integers(2, 6))) if i % 3 == 0 else b for i, b in enumerate(boxes)]
    gt.append(np.array([[400, 400], [430, 400], [445, 420], [430, 440], [400, 440]], dtype=float))  # odd count
    det = noisy(rng, boxes, p_fp=0.3)
    det += [_polygon(rng, b, 4) for b in boxes[::4]]  # extra, partly non-convex polygons
    det += [rect(700, 700, 40, 12), rect(700, 750, 12, 40), np.round(rect(800, 800, 33.3, 11.1))]  # tie FPs
    ours = evaluate_image(gt, det)
    _assert_same(ours, _competition_image(gt, det, monkeypatch))
