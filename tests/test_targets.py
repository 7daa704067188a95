"""DBNet targets: hand-checked values on a rectangle, ignore rules, clamping, and the
fast implementation against the plain reference of benchmarks/bench_targets.py."""

from __future__ import annotations

import numpy as np
import pytest
from reference_targets import receipt_words, reference_targets

from hrnet_sweep.dbnet.targets import make_targets

pytestmark = pytest.mark.unit

KEYS = ("prob_map", "prob_mask", "thresh_map", "thresh_mask")


def _reference(*args, **kwargs):
    return reference_targets(*args, **kwargs)


def _assert_close(ours: dict, ref: dict, tol: float = 1e-3) -> None:
    for key in KEYS:
        assert ours[key].shape == ref[key].shape, key
        diff = float(np.abs(ours[key] - ref[key]).max())
        assert diff <= tol, f"{key}: max abs diff {diff:.3g}"


def rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def random_polygons(rng: np.random.Generator, count: int, size: int) -> list[np.ndarray]:
    """Star-shaped polygons (convex or not) of 3 to 12 points, some crossing the border."""
    polys = []
    for _ in range(count):
        k = int(rng.integers(3, 13))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(6, 40, k) * rng.uniform(0.5, 1.0, k)
        stretch = rng.uniform(1, 3)
        centre = rng.uniform(-10, size + 10, 2)
        pts = np.stack([centre[0] + stretch * radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
        polys.append(pts.astype(np.float32))
    return polys


# ----------------------------------------------------------------------------- hand-checked


def test_rectangle_20x10_by_hand():
    # A = 200, L = 60, D = 200 * (1 - 0.16) / 60 = 2.8
    maps = make_targets([rect(10, 10, 30, 20)], 32, 40)
    for key in KEYS:
        assert maps[key].dtype == np.float32 and maps[key].shape == (32, 40)

    # shrunk by 2.8 to (12.8, 12.8)-(27.2, 17.2); pyclipper rounds to (13, 13)-(27, 17)
    expected = np.zeros((32, 40), np.float32)
    expected[13:18, 13:28] = 1
    np.testing.assert_array_equal(maps["prob_map"], expected)
    assert (maps["prob_mask"] == 1).all()

    t = maps["thresh_map"]
    d = 2.8
    scaled = lambda dist: 0.3 + 0.4 * max(0.0, 1 - dist / d)  # noqa: E731
    assert t[10, 20] == pytest.approx(0.7)  # on the top edge
    assert t[11, 20] == pytest.approx(scaled(1))  # 1 px inside
    assert t[8, 20] == pytest.approx(scaled(2))  # 2 px outside
    assert t[15, 11] == pytest.approx(scaled(1))  # 1 px inside the left edge
    assert t[9, 9] == pytest.approx(scaled(2**0.5))  # outside the corner: distance to it
    assert t[15, 20] == pytest.approx(0.3)  # centre, 5 px from the long edges
    assert t[8, 8] == pytest.approx(0.3)  # 2.83 px from the corner: beyond D
    assert t.min() == pytest.approx(0.3) and t.max() == pytest.approx(0.7)

    # dilated by 2.8: the mask spans x 7..33, y 7..23 and has rounded corners
    m = maps["thresh_mask"]
    assert m[8, 20] == 1 and m[7, 20] == 1 and m[6, 20] == 0
    assert m[15, 7] == 1 and m[15, 33] == 1 and m[15, 34] == 0 and m[23, 20] == 1 and m[24, 20] == 0
    assert m[7, 7] == 0  # the corner is round
    assert m[12:19, 12:29].all()


def test_thresh_range_and_shrink_ratio_are_parameters():
    maps = make_targets([rect(10, 10, 30, 20)], 32, 40, shrink_ratio=0.5, thresh_min=0.2, thresh_max=0.9)
    d = 200 * (1 - 0.25) / 60
    assert maps["thresh_map"][10, 20] == pytest.approx(0.9)
    assert maps["thresh_map"][11, 20] == pytest.approx(0.2 + 0.7 * (1 - 1 / d))
    assert maps["thresh_map"].min() == pytest.approx(0.2)


def test_empty_input():
    maps = make_targets([], 16, 24, ignore=[])
    assert set(maps) == set(KEYS)
    assert (maps["prob_map"] == 0).all() and (maps["prob_mask"] == 1).all()
    assert np.allclose(maps["thresh_map"], 0.3) and (maps["thresh_mask"] == 0).all()
    assert all(m.shape == (16, 24) and m.dtype == np.float32 for m in maps.values())


def test_compact_maps_equal_the_float_maps():
    rng = np.random.default_rng(3)
    polys = random_polygons(rng, 40, 200)
    ignore = [i % 7 == 0 for i in range(len(polys))]
    full = make_targets(polys, 200, 180, ignore=ignore)
    compact = make_targets(polys, 200, 180, ignore=ignore, compact=True)
    for key in KEYS:
        assert compact[key].dtype == (np.float32 if key == "thresh_map" else np.uint8), key
        np.testing.assert_array_equal(compact[key].astype(np.float32), full[key], err_msg=key)
    assert full["prob_map"].any() and not full["prob_mask"].all()


# ----------------------------------------------------------------------------- ignore rules


def _only_masked(maps: dict, region: tuple[slice, slice]) -> None:
    expected = np.ones_like(maps["prob_mask"])
    expected[region] = 0
    np.testing.assert_array_equal(maps["prob_mask"], expected)
    assert (maps["prob_map"] == 0).all() and (maps["thresh_mask"] == 0).all()
    assert np.allclose(maps["thresh_map"], 0.3)


def test_ignore_flag_masks_the_polygon_out():
    maps = make_targets([rect(10, 10, 30, 20)], 32, 40, ignore=[True])
    _only_masked(maps, (slice(10, 21), slice(10, 31)))


@pytest.mark.parametrize("poly", [rect(10, 10, 30, 15), rect(10, 10, 15.5, 30)], ids=["short", "narrow"])
def test_polygons_thinner_than_min_text_size_are_ignored(poly):
    maps = make_targets([poly], 32, 40)
    x0, y0 = poly.min(0).astype(int)
    x1, y1 = poly.max(0).astype(int)
    _only_masked(maps, (slice(y0, y1 + 1), slice(x0, x1 + 1)))
    # with a smaller limit the same polygon is a word
    assert make_targets([poly], 32, 40, min_text_size=4)["prob_map"].any()


def test_ignored_and_kept_polygons_together():
    polys = [rect(2, 2, 30, 14), rect(2, 20, 30, 32), rect(34, 2, 38, 30)]
    maps = make_targets(polys, 36, 44, ignore=[False, True, False])
    assert maps["prob_map"][8, 16] == 1 and maps["prob_map"][26, 16] == 0
    assert maps["prob_mask"][26, 16] == 0 and maps["prob_mask"][8, 16] == 1
    assert maps["prob_mask"][16, 36] == 0  # 4 px wide: too thin
    _assert_close(maps, _reference(polys, 36, 44, ignore=[False, True, False]))


def test_polygon_whose_shrink_is_empty_is_ignored():
    # a 1 px wide diagonal strip: a 40 x 40 bounding box, but nothing left after shrinking
    sliver = np.array([[0, 0], [1, 0], [40, 39], [40, 40], [39, 40], [0, 1]], np.float32)
    maps = make_targets([sliver], 48, 48)
    assert not maps["prob_map"].any() and not maps["thresh_mask"].any()
    assert maps["prob_mask"].min() == 0
    _assert_close(maps, _reference([sliver], 48, 48))


# ----------------------------------------------------------------------------- outside the image


def test_polygon_crossing_the_border_is_clamped():
    poly = rect(-20, 10, 40, 30)
    maps = make_targets([poly], 48, 32)
    clamped = make_targets([rect(0, 10, 31, 30)], 48, 32)
    for key in KEYS:
        np.testing.assert_array_equal(maps[key], clamped[key])
    assert maps["prob_map"].any()
    np.testing.assert_array_equal(poly, rect(-20, 10, 40, 30))  # the caller's array is untouched


def test_polygons_outside_the_image_do_not_crash():
    polys = [rect(100, 100, 140, 120), rect(-60, -60, -20, -20), rect(-1e6, 5, 1e6, 25)]
    maps = make_targets(polys, 32, 32)
    assert maps["prob_map"].any()  # the wide one is clamped into a word across the image
    _assert_close(maps, _reference(polys, 32, 32))


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_reference_on_random_polygons(seed):
    rng = np.random.default_rng(seed)
    polys = random_polygons(rng, 25, 160)
    ignore = list(rng.random(len(polys)) < 0.15)
    _assert_close(make_targets(polys, 150, 170, ignore=ignore), _reference(polys, 150, 170, ignore=ignore))


def test_equals_reference_on_receipt_words():
    words = receipt_words(40, size=384, seed=5)
    _assert_close(make_targets(words, 384, 384), _reference(words, 384, 384))


def test_equals_reference_with_other_parameters():
    polys = random_polygons(np.random.default_rng(7), 15, 120)
    options = {"shrink_ratio": 0.6, "thresh_min": 0.1, "thresh_max": 0.9, "min_text_size": 4}
    _assert_close(make_targets(polys, 120, 120, **options), _reference(polys, 120, 120, **options))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "polys, kwargs, match",
    [
        ([rect(0, 0, 9, 9)], {"ignore": [False, True]}, "ignore has 2 flags for 1 polygons"),
        ([np.zeros((2, 2), np.float32)], {}, r"polygon 0 has shape \[2, 2\]"),
        ([rect(0, 0, 9, 9), np.zeros((4, 3))], {}, r"polygon 1 has shape \[4, 3\]"),
        ([np.array([[0, 0], [np.nan, 1], [1, 1]])], {}, "polygon 0 has NaN"),
        ([], {"shrink_ratio": 1.0}, "shrink_ratio"),
        ([], {"thresh_min": 0.7, "thresh_max": 0.3}, "thresh_min"),
    ],
)
def test_bad_input_is_rejected(polys, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_targets(polys, 16, 16, **kwargs)


def test_repeated_corner_point_keeps_the_public_code_hole():
    # two points clamped into the corner (0, 0): the public code's distance is NaN at
    # that pixel, so the polygon adds no border value there; one pixel further it does
    poly = np.array([[-5, -5], [-3, -8], [20, 2], [20, 20], [2, 20]], np.float32)
    maps = make_targets([poly], 32, 32)
    assert maps["thresh_map"][0, 0] == pytest.approx(0.3)
    assert maps["thresh_map"][0, 1] > 0.6
    _assert_close(maps, _reference([poly], 32, 32))


@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (0.37, 0.61), (0.5, 0.25)])
def test_edges_clamped_onto_the_border_equal_reference(dx, dy):
    # clamping puts an edge exactly on the pixel column x = 0 or the row y = 31, where
    # the public code's arithmetic is NaN on some pixels; the maps still agree
    polys = [rect(-20 + dx, 3.3 + dy, 20.2, 14.9 + dy), rect(8.1 + dx, 20.6 + dy, 30.8, 45 + dy)]
    _assert_close(make_targets(polys, 32, 40), _reference(polys, 32, 40))


def test_large_polygon_with_many_points_equals_reference(monkeypatch):
    # the distance planes of a big polygon are computed a few edges at a time
    import hrnet_sweep.dbnet.targets as targets

    monkeypatch.setattr(targets, "_BUDGET", 3 * 90 * 120 * 3)
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    blob = np.stack([60 + 50 * np.cos(t), 45 + 35 * np.sin(t)], 1).astype(np.float32)
    _assert_close(make_targets([blob], 90, 120), _reference([blob], 90, 120))


# ----------------------------------------------------------------------------- point order and zero area


def test_counter_clockwise_polygon_gives_the_papers_threshold_map():
    # The paper reverses a polygon counter-clockwise on screen before drawing. The order
    # reaches the map through its arithmetic on the column edge x = 10: in the paper's
    # order (10, 20) is on the edge (0.7), the other order gives NaN there (0.3).
    ccw = np.array([[10, 20.3], [40, 20.3], [40, 10], [10, 10]])
    cw = ccw[::-1].copy()
    maps = make_targets([ccw], 640, 640)
    t = maps["thresh_map"]
    assert t[20, 10] == pytest.approx(0.7) and t[20, 40] == pytest.approx(0.3)
    clockwise = make_targets([cw], 640, 640)
    for key in KEYS:
        np.testing.assert_array_equal(maps[key], clockwise[key], err_msg=key)
    _assert_close(maps, _reference([ccw], 640, 640))
    np.testing.assert_array_equal(ccw, [[10, 20.3], [40, 20.3], [40, 10], [10, 10]])  # the caller's array


@pytest.mark.parametrize(
    "flat",
    [
        np.array([[4, 24], [14, 24], [24, 24], [34, 24]], np.float32),
        np.array([[20, 26]] * 4, np.float32),
        np.array([[5, 28], [5, 28], [30, 28], [30, 28]], np.float32),
    ],
    ids=["line", "point", "two points"],
)
def test_zero_area_polygons_are_masked_without_failing(flat):
    word = rect(2, 2, 30, 14)
    maps = make_targets([word, flat], 32, 40)
    assert all(np.isfinite(m).all() for m in maps.values())
    alone = make_targets([word], 32, 40)
    for key in ("prob_map", "thresh_map", "thresh_mask"):
        np.testing.assert_array_equal(maps[key], alone[key], err_msg=key)
    x0, y0 = flat.min(0).astype(int)
    assert maps["prob_mask"][y0, x0] == 0
    _assert_close(maps, _reference([word, flat], 32, 40))
