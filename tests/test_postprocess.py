"""DB post-processing: round trips through the targets, letterbox mapping, filters, a
pinned regression polygon, and the fast implementation against the plain reference of
benchmarks/bench_postprocess.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import reference_postprocess as bench
from shapely.geometry import Polygon

from hrnet_sweep.config import PostprocessConfig
from hrnet_sweep.dbnet.postprocess import detect, postprocess
from hrnet_sweep.dbnet.targets import make_targets

pytestmark = pytest.mark.unit


def iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a).buffer(0), Polygon(b).buffer(0)
    return pa.intersection(pb).area / pa.union(pb).area


def best_ious(truth: list[np.ndarray], found: list[np.ndarray]) -> list[float]:
    return [max((iou(t, f) for f in found), default=0.0) for t in truth]


def word_quads(seed: int, count: int, size: int, height=(60, 90)) -> list[np.ndarray]:
    """Rotated 3:1 rectangles with jittered corners, at least 10 px apart."""
    rng = np.random.default_rng(seed)
    quads: list[np.ndarray] = []
    while len(quads) < count:
        h = rng.uniform(*height)
        w = 3 * h
        angle = rng.uniform(-0.5, 0.5)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2 @ rot.T
        quad = corners + rng.uniform(2 * h, size - 2 * h, 2) + rng.uniform(-2, 2, (4, 2))
        if all(Polygon(quad).distance(Polygon(q)) > 10 for q in quads):
            quads.append(quad.astype(np.float32))
    return quads


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_polygon, unclip_ratio", [(False, 1.8), (True, 2.0)], ids=["box", "polygon"])
def test_round_trip_recovers_the_words(seed, use_polygon, unclip_ratio):
    # The shrink of a 3:1 word (r = 0.4) is undone by an unclip ratio near 2 (a little
    # less for the minimum-area rectangle, which already encloses the pixel staircase).
    quads = word_quads(seed, 8, 1024)
    prob = make_targets(quads, 1024, 1024)["prob_map"]
    polys, scores = postprocess(prob, unclip_ratio=unclip_ratio, use_polygon=use_polygon, box_thresh=0.5)
    assert len(polys) == len(quads)
    assert min(best_ious(quads, polys)) > 0.9
    assert all(0.5 <= s <= 1.0 for s in scores)
    assert all(p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 2 for p in polys)
    if not use_polygon:
        assert all(p.shape == (4, 2) for p in polys)
    else:
        assert all(len(p) >= 4 for p in polys)


def _letterbox(quads: list[np.ndarray], image_hw: tuple[int, int], side: int):
    """The network-input view of an image: longest side resized to `side`, padding at
    the bottom and right. Returns (prob map, content size)."""
    scale = side / max(image_hw)
    content = (round(image_hw[0] * scale), round(image_hw[1] * scale))
    prob = make_targets([q * scale for q in quads], side, side)["prob_map"]
    return prob, content


@pytest.mark.parametrize("use_polygon, unclip_ratio", [(False, 1.8), (True, 2.0)], ids=["box", "polygon"])
def test_letterboxed_map_maps_back_to_original_pixels(use_polygon, unclip_ratio):
    image_hw = (700, 1100)  # landscape: padding at the bottom of the square input
    quads = [q for q in word_quads(3, 10, 1100) if q[:, 1].max() < 690][:5]
    prob, content = _letterbox(quads, image_hw, 800)
    assert content == (509, 800)
    options = {"unclip_ratio": unclip_ratio, "use_polygon": use_polygon, "box_thresh": 0.5}

    polys, _ = postprocess(prob, content_size=content, image_size=image_hw, **options)
    assert len(polys) == len(quads)
    assert min(best_ious(quads, polys)) > 0.85
    for p in polys:
        assert (p >= 0).all() and (p[:, 0] <= image_hw[1]).all() and (p[:, 1] <= image_hw[0]).all()


def test_padding_outside_the_content_is_ignored():
    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:60] = 1.0  # a word in the content
    prob[80:95, 10:60] = 1.0  # something in the padding rows
    polys, _ = postprocess(prob, content_size=(70, 100))
    assert len(polys) == 1 and polys[0][:, 1].max() < 40
    assert len(postprocess(prob)[0]) == 2


@pytest.mark.parametrize("use_polygon", [False, True], ids=["box", "polygon"])
def test_coordinates_are_clamped_to_the_image(use_polygon):
    # [0, W] x [0, H], as the public code clamps (not [0, W - 1])
    prob = np.zeros((60, 80), np.float32)
    prob[0:20, 0:40] = 1.0  # touching the top-left corner: unclipping goes past it
    prob[40:60, 50:80] = 1.0  # touching the bottom-right corner
    polys, _ = postprocess(prob, image_size=(120, 160), use_polygon=use_polygon)
    assert len(polys) == 2
    points = np.concatenate(polys)
    assert points.min() == 0.0
    assert points[:, 0].max() == 160 and points[:, 1].max() == 120


# ----------------------------------------------------------------------------- one frame, one set of defaults


def test_defaults_are_the_config_defaults():
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(postprocess).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    config = PostprocessConfig()
    keys = ("thresh", "box_thresh", "unclip_ratio", "use_polygon", "max_candidates", "min_size")
    assert {k: defaults[k] for k in keys} == {k: getattr(config, k) for k in keys}
    prob, _ = bench.receipt_prob_map(20, size=320, seed=2)
    ours, scores = postprocess(prob, image_size=(500, 400))
    via_config, config_scores = detect(prob, PostprocessConfig(), image_size=(500, 400))
    assert len(ours) >= 5 and scores == config_scores
    assert all(np.array_equal(a, b) for a, b in zip(ours, via_config))


def _two_bars(scale: int) -> np.ndarray:
    """A 5 px and a 23 px thick bar of a 400 x 400 image, drawn on a map 1 / scale its size."""
    prob = np.zeros((400 // scale, 400 // scale), np.float32)
    prob[100 // scale : 106 // scale, 50 // scale : 110 // scale] = 0.9
    prob[200 // scale : 224 // scale, 50 // scale : 110 // scale] = 0.9
    return prob


@pytest.mark.parametrize("use_polygon", [False, True], ids=["box", "polygon"])
def test_min_size_is_in_original_image_pixels(use_polygon):
    pp = PostprocessConfig(min_size=16, use_polygon=use_polygon)
    full, _ = detect(_two_bars(1), pp)
    half, _ = detect(_two_bars(2), pp, image_size=(400, 400))
    assert len(full) == len(half) == 1  # the thin bar only is dropped, at either map size
    assert best_ious(full, half)[0] > 0.85
    letterboxed = np.zeros((256, 256), np.float32)
    letterboxed[:200, :200] = _two_bars(2)
    boxed, _ = detect(letterboxed, pp, content_size=(200, 200), image_size=(400, 400))
    assert len(boxed) == 1 and np.array_equal(boxed[0], half[0])


def test_uint8_map_reads_as_value_over_255():
    prob = _regression_map()
    as_uint8 = np.rint(prob * 255).astype(np.uint8)
    for use_polygon in (False, True):
        pp = PostprocessConfig(box_thresh=0.5, use_polygon=use_polygon)
        (a,), (sa,) = detect(prob, pp)
        (b,), (sb,) = detect(as_uint8, pp)
        np.testing.assert_array_equal(a, b)
        assert sa == pytest.approx(sb, abs=1 / 255)


# ----------------------------------------------------------------------------- filters


def _two_blobs() -> np.ndarray:
    prob = np.zeros((64, 128), np.float32)
    prob[10:30, 10:60] = 0.9
    prob[35:55, 70:120] = 0.5
    return prob


@pytest.mark.parametrize("use_polygon", [False, True], ids=["box", "polygon"])
def test_box_thresh_filters_on_the_mean_probability(use_polygon):
    prob = _two_blobs()
    polys, scores = postprocess(prob, box_thresh=0.7, use_polygon=use_polygon)
    assert len(polys) == 1 and scores[0] == pytest.approx(0.9)
    polys, scores = postprocess(prob, box_thresh=0.4, use_polygon=use_polygon)
    assert sorted(round(s, 4) for s in scores) == [0.5, 0.9]
    # a blob under the binarization threshold is not a candidate at all
    assert postprocess(prob, thresh=0.6, box_thresh=0.0, use_polygon=use_polygon)[1] == [pytest.approx(0.9)]


def test_max_candidates_and_min_size():
    prob = np.zeros((40, 400), np.float32)
    for i in range(10):
        prob[10:30, 5 + 40 * i : 35 + 40 * i] = 1.0
    assert len(postprocess(prob)[0]) == 10
    assert len(postprocess(prob, max_candidates=3)[0]) == 3
    assert postprocess(prob, max_candidates=0) == ([], [])
    tiny = np.zeros((40, 40), np.float32)
    tiny[10:12, 10:12] = 1.0
    assert postprocess(tiny) == ([], [])
    assert postprocess(tiny, use_polygon=True) == ([], [])


def test_empty_map_gives_nothing():
    assert postprocess(np.zeros((32, 32), np.float32)) == ([], [])
    assert postprocess(np.zeros((32, 32), np.float16), use_polygon=True) == ([], [])


# ----------------------------------------------------------------------------- pinned regression


def _regression_map() -> np.ndarray:
    prob = np.zeros((64, 96), np.float32)
    cv2.fillPoly(prob, [np.array([[20, 18], [74, 26], [71, 44], [17, 36]], np.int32)], 0.8)
    return prob


def test_pinned_box():
    (box,), (score,) = postprocess(_regression_map(), box_thresh=0.5, use_polygon=False)
    expected = [[9.32, 4.30], [86.67, 15.55], [80.68, 56.70], [3.33, 45.45]]
    np.testing.assert_allclose(box, expected, atol=0.05)
    assert score == pytest.approx(0.74755, abs=1e-4)  # the rectangle also covers some zeros


def test_pinned_polygon():
    (poly,), (score,) = postprocess(_regression_map(), box_thresh=0.5, use_polygon=True)
    assert Polygon(poly).is_valid and len(poly) == 56
    assert Polygon(poly).area == pytest.approx(2764.0)
    np.testing.assert_array_equal(poly.min(axis=0), [7, 8])
    np.testing.assert_array_equal(poly.max(axis=0), [84, 54])
    np.testing.assert_array_equal(poly[:3], [[82, 20], [84, 26], [84, 28]])
    assert score == pytest.approx(0.8, abs=1e-6)


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("use_polygon", [False, True], ids=["box", "polygon"])
def test_equals_reference_on_a_receipt_map(use_polygon):
    prob, _ = bench.receipt_prob_map(40, size=640, seed=4)
    options = {"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.5, "use_polygon": use_polygon}
    ours, ours_scores = postprocess(prob, image_size=(900, 700), **options)
    ref, ref_scores = bench.reference_postprocess(prob, image_size=(900, 700), **options)
    assert len(ours) > 30
    assert bench.max_polygon_diff(ours, ref) <= 1.0
    np.testing.assert_allclose(ours_scores, ref_scores, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "prob, kwargs, match",
    [
        (np.zeros((1, 8, 8)), {}, r"\(H, W\) map"),
        (np.zeros((0, 8)), {}, r"\(H, W\) map"),
        (np.zeros((8, 8)), {"content_size": (9, 8)}, "larger than the map"),
        (np.zeros((8, 8)), {"image_size": (0, 8)}, "image_size must be positive"),
        (np.zeros((8, 8)), {"content_size": "big"}, "content_size must be"),
        (np.zeros((8, 8)), {"unclip_ratio": 0}, "unclip_ratio"),
    ],
)
def test_bad_input_is_rejected(prob, kwargs, match):
    with pytest.raises(ValueError, match=match):
        postprocess(prob, **kwargs)
