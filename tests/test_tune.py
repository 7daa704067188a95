"""Post-processing search on constructed probability maps: it finds the setting the maps
were built for, the box_thresh-as-filter shortcut equals running every setting, and the
tuned values land in the preset."""

from __future__ import annotations

import numpy as np
import pyclipper
import pytest
import yaml

from hrnet_sweep.dbnet.postprocess import postprocess
from hrnet_sweep.errors import UserError
from hrnet_sweep.metric import evaluate
from hrnet_sweep.pipeline.tune import Grid, Setting, parse_grid, score_settings, tune_postprocess

pytestmark = pytest.mark.unit


def _shrink(rect: np.ndarray, ratio: float = 0.4) -> np.ndarray:
    """The DB paper's shrink: offset by D = A (1 - r^2) / L."""
    w, h = rect[2] - rect[0], rect[3] - rect[1]
    d = w * h * (1 - ratio**2) / (2 * (w + h))
    pco = pyclipper.PyclipperOffset()
    pco.AddPath(
        [[rect[0], rect[1]], [rect[2], rect[1]], [rect[2], rect[3]], [rect[0], rect[3]]],
        pyclipper.JT_ROUND,
        pyclipper.ET_CLOSEDPOLYGON,
    )
    return np.array(pco.Execute(-d)[0], np.int32)


def constructed_map(seed: int):
    """Word pairs whose shrunk kernels (0.9) are joined by a 0.45 bridge, plus 0.6 noise
    blobs where there is no text: thresh 0.5 splits the pairs, box_thresh 0.7 drops the
    blobs. Returns (map, GT polygons)."""
    import cv2

    rng = np.random.default_rng(seed)
    prob = np.zeros((240, 320), np.float32)
    gts = []
    for row in range(4):
        y = 12 + row * 56
        x = 10 + int(rng.integers(0, 20))
        left = np.array([x, y, x + 110, y + 36])
        right = np.array([x + 126, y, x + 126 + 90 + int(rng.integers(0, 40)), y + 36])
        kl, kr = _shrink(left), _shrink(right)
        cy0, cy1 = kl[:, 1].min() + 3, kl[:, 1].max() - 3
        prob[cy0:cy1, kl[:, 0].max() - 2 : kr[:, 0].min() + 2] = 0.45  # bridge between the kernels
        cv2.fillPoly(prob, [kl, kr], 0.9)
        for r in (left, right):
            gts.append(np.array([[r[0], r[1]], [r[2], r[1]], [r[2], r[3]], [r[0], r[3]]], np.float32))
    for _ in range(3):  # noise blobs in the right margin, no text there
        x, y = 290, int(rng.integers(10, 200))
        prob[y : y + 14, x : x + 14] = 0.6
    return prob, gts


# CLEval forgives tight boxes (pseudo characters lie inside the shrunk kernel), not
# boxes so large that the word covers less than 30 % of them: unclip 8 loses.
GRID = Grid(thresh=(0.3, 0.5), box_thresh=(0.4, 0.7), unclip_ratio=(1.5, 8.0), use_polygon=(True, False), refine=False)


def test_tune_finds_the_known_best_setting():
    maps, gts = {}, {}
    for i in range(3):
        maps[f"im{i}.jpg"], gts[f"im{i}.jpg"] = constructed_map(i)
    best, table = tune_postprocess(maps, gts, GRID)
    assert (best["thresh"], best["box_thresh"], best["unclip_ratio"]) == (0.5, 0.7, 1.5)
    assert best["hmean"] > 0.95
    assert len(table) == len(GRID.settings()) and table[0] == best
    by = {(r["thresh"], r["box_thresh"], r["unclip_ratio"], r["use_polygon"]): r["hmean"] for r in table}
    mode = best["use_polygon"]
    assert by[(0.3, 0.7, 1.5, mode)] < best["hmean"] - 0.05  # the bridges merge word pairs
    assert by[(0.5, 0.4, 1.5, mode)] < best["hmean"] - 0.03  # the blobs are false positives
    assert by[(0.5, 0.7, 8.0, mode)] < best["hmean"] - 0.3  # boxes far larger than the words


def test_uint8_maps_and_smaller_maps_with_image_sizes():
    prob, gts = constructed_map(0)
    small = (np.rint(prob[::2, ::2] * 255)).astype(np.uint8)
    best, _ = tune_postprocess({"a.jpg": small}, {"a.jpg": gts}, GRID, image_sizes={"a.jpg": prob.shape})
    assert (best["thresh"], best["box_thresh"]) == (0.5, 0.7) and best["hmean"] > 0.9


def test_box_thresh_filter_equals_running_each_setting():
    prob, gts = constructed_map(1)
    settings = Grid(
        thresh=(0.3, 0.5), box_thresh=(0.4, 0.55, 0.7), unclip_ratio=(1.5, 2.0), use_polygon=(True, False)
    ).settings()
    rows = score_settings([(prob, None, gts)], settings)
    for s, row in zip(settings, rows):
        polys, _ = postprocess(prob, **s.as_dict())
        direct = evaluate({"a": gts}, {"a": polys})
        assert row["hmean"] == pytest.approx(direct.hmean, abs=1e-12), s


def test_tuning_and_prediction_give_the_same_polygons():
    # the search's stages shared across settings, and `predict`'s one pass per map, are
    # one post-processing of one representation (the network-frame map as uint8, polygons
    # scaled to the image): the same polygons for every setting, whatever the map's size
    import cv2

    from hrnet_sweep.config import PostprocessConfig
    from hrnet_sweep.dbnet.inference import ProbMap, postprocess_map
    from hrnet_sweep.dbnet.postprocess import to_uint8
    from hrnet_sweep.dbnet.validation import detections

    prob, _ = constructed_map(2)
    settings = Grid(
        thresh=(0.3, 0.5), box_thresh=(0.4, 0.55, 0.7), unclip_ratio=(1.5, 2.0), use_polygon=(True, False)
    ).settings()
    base = PostprocessConfig(min_size=6, max_candidates=100)
    fixed = {"min_size": base.min_size, "max_candidates": base.max_candidates}
    image_size = (480, 640)  # the map is the network's view of a larger image
    for m in (prob, cv2.resize(prob, (200, 150), interpolation=cv2.INTER_AREA)):
        tuned = dict(detections(to_uint8(m), image_size, settings, fixed))
        for i, s in enumerate(settings):
            predicted, _ = postprocess_map(ProbMap(m, image_size), base.model_copy(update=s.as_dict()))
            assert len(predicted) > 0 and [p.tolist() for p in tuned[i]] == [p.tolist() for p in predicted], s


def test_parallel_workers_equal_serial():
    items = [(constructed_map(i)[0], None, constructed_map(i)[1]) for i in range(3)]
    settings = GRID.settings()[:6]
    par, ser = score_settings(items, settings, workers=2), score_settings(items, settings, workers=1)
    assert [r["hmean"] for r in par] == pytest.approx([r["hmean"] for r in ser], abs=1e-12)
    assert [r["thresh"] for r in par] == [r["thresh"] for r in ser]


def test_refine_searches_half_steps_around_the_coarse_best():
    maps, gts = {}, {}
    for i in range(2):
        maps[f"im{i}.jpg"], gts[f"im{i}.jpg"] = constructed_map(i)
    grid = Grid(thresh=(0.3, 0.5), box_thresh=(0.5, 0.7), unclip_ratio=(1.0, 1.5), use_polygon=(True,))
    best, table = tune_postprocess(maps, gts, grid)
    refined = [r for r in table if r["stage"] == "refine"]
    assert refined and {r["thresh"] for r in refined} <= {0.4, 0.5, 0.6}
    assert best["hmean"] >= max(r["hmean"] for r in table if r["stage"] == "coarse")


def test_missing_maps_and_bad_grid_are_errors():
    with pytest.raises(UserError, match="no cached map"):
        tune_postprocess({}, {"a.jpg": []}, GRID)
    with pytest.raises(UserError, match="thresh=1.5"):
        parse_grid(["thresh=0.2,1.5"])
    with pytest.raises(UserError, match="unknown key"):
        parse_grid(["thresholds=0.2"])
    g = parse_grid(["thresh=0.25,0.35", "mode=box", "unclip-ratio=1.8"])
    assert g.thresh == (0.25, 0.35) and g.use_polygon == (False,) and g.unclip_ratio == (1.8,)
    assert Setting(0.3, 0.5, 1.5, True).as_dict()["use_polygon"] is True


def test_tuned_values_written_into_the_preset_keep_the_provenance(tmp_path):
    from hrnet_sweep.config import load_config
    from hrnet_sweep.pipeline.presets import read_provenance, write_postprocess

    preset = tmp_path / "p.yaml"
    preset.write_text(
        "# provenance (hrnet_sweep best):\n#   sweep: a/b/c\n#   best: 0.5\n"
        "base: hrnet_w18_small_cpu\nmodels:\n  optimizer:\n    lr: 0.002\n"
    )
    values = {"thresh": 0.45, "box_thresh": 0.65, "unclip_ratio": 1.7, "use_polygon": False}
    write_postprocess(preset, values, "test")
    write_postprocess(preset, {**values, "thresh": 0.4}, "again")
    text = preset.read_text()
    assert text.count("# tuned post-processing") == 1 and "again" in text
    assert read_provenance(preset) == {"sweep": "a/b/c", "best": 0.5}
    cfg = load_config([f"preset={preset}"])
    pp = cfg.models.postprocess
    assert (pp.thresh, pp.box_thresh, pp.unclip_ratio, pp.use_polygon) == (0.4, 0.65, 1.7, False)
    assert cfg.models.optimizer.lr == 0.002 and yaml.safe_load(text)["base"] == "hrnet_w18_small_cpu"
