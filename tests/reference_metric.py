"""The reference for `hrnet_sweep.metric`: the `cleval` package's detection-only CLEval
(clovaai, installed as the test oracle), called as its own metric calls it, and the
receipt-like cases both the tests and `benchmarks/bench_metric.py` score. The benchmarks
import it too, so tests and benchmarks compare against the same reference.
"""

from __future__ import annotations

import math

import numpy as np

from hrnet_sweep.metric import evaluate_image

# ----------------------------------------------------------------------------- data


def rect(x, y, w, h):
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)


def receipt_rows(rng: np.random.Generator, n_words: int) -> list[np.ndarray]:
    """Axis-aligned word boxes of a receipt: rows of 1-5 words of varied width."""
    boxes, y = [], 20.0
    while len(boxes) < n_words:
        h, x = rng.uniform(14, 30), rng.uniform(5, 40)
        for _ in range(rng.integers(1, 6)):
            w = rng.uniform(15, 160)
            boxes.append(rect(x, y, w, h))
            x += w + rng.uniform(4, 25)
            if len(boxes) == n_words:
                break
        y += h + rng.uniform(2, 12)
    return boxes


def split(box, t=0.5):
    top = box[0] + t * (box[1] - box[0])
    bottom = box[3] + t * (box[2] - box[3])
    return [np.array([box[0], top, bottom, box[3]]), np.array([top, box[1], box[2], bottom])]


def merge(a, b):
    return np.array([a[0], b[1], b[2], a[3]])


def noisy(rng, gt, *, jitter=2.0, p_drop=0.05, p_split=0.05, p_merge=0.05, p_fp=0.03):
    """Detections of `gt`: each box dropped, split in two, merged with the next one or
    jittered (normal noise of scale `jitter`, or of a scale drawn per box from the range
    `jitter` when it is a tuple), plus random false positives."""
    out, i = [], 0
    while i < len(gt):
        r = rng.random()
        if r < p_drop:
            pass
        elif r < p_drop + p_split:
            out += split(gt[i], rng.uniform(0.3, 0.7))
        elif r < p_drop + p_split + p_merge and i + 1 < len(gt):
            out.append(merge(gt[i], gt[i + 1]))
            i += 1
        else:
            scale = rng.uniform(*jitter) if isinstance(jitter, tuple) else jitter
            out.append(gt[i] + rng.normal(0, scale, (4, 2)))
        if rng.random() < p_fp:
            out.append(rect(*rng.uniform(0, 600, 2), rng.uniform(10, 80), rng.uniform(8, 30)))
        i += 1
    return out


def make_image(rng: np.random.Generator, n_words: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(GT quads, detections) of one receipt-like image."""
    gt = receipt_rows(rng, n_words)
    angle = rng.uniform(-0.25, 0.25) if rng.random() < 0.5 else 0.0
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        gt = [(b - 300) @ np.array([[c, -s], [s, c]]).T + 400 for b in gt]
    integer = rng.random() < 0.5
    if integer:
        gt = [np.round(b) for b in gt]
    det = noisy(rng, gt, jitter=(0.5, 3.0), p_drop=0.04)
    if integer:
        det = [np.round(d) for d in det]
    return gt, det


def make_images(n_images: int, n_words: int, seed: int):
    rng = np.random.default_rng(seed)
    return [make_image(rng, n_words) for _ in range(n_images)]


# ----------------------------------------------------------------------------- the package


class PackageOptions:
    """The package's `evaluation` options: detection only, penalties 1, area precision 0.3."""

    E2E = ORIENTATION = DUMP_SAMPLE_RESULT = False
    CASE_SENSITIVE = True
    RECALL_GRANULARITY_PENALTY_WEIGHT = PRECISION_GRANULARITY_PENALTY_WEIGHT = 1.0
    VERTICAL_ASPECT_RATIO_THRESH = 0.5
    AREA_PRECISION_CONSTRAINT = 0.3


def package_stats(gt, det):
    """Detection-only CLEval stats (`.stats.det`) of the `cleval` package on quads.

    The package has no transcription-free mode (CLEvalMetric(det, gt) fails on len(None)),
    so each GT box gets a transcription as long as its own pseudo count, and the core
    `evaluation` runs with E2E off, as CLEvalMetric.update would.
    """
    from cleval.box_types import QUAD
    from cleval.eval_functions import evaluation

    gts = []
    for q in gt:
        box = QUAD(np.asarray(q, dtype=np.float64).reshape(-1), transcription="", is_dc=False)
        box.transcription = "#" * box.pseudo_transcription_length()
        gts.append(box)
    dets = [QUAD(np.asarray(q, dtype=np.float64).reshape(-1), transcription="", is_dc=False) for q in det]
    return evaluation(PackageOptions, gts, dets).stats.det


def package_image(gt, det):
    """(precision, recall, hmean) of the package (see `package_stats`)."""
    s = package_stats(gt, det)
    return s.precision, s.recall, s.hmean


def ours_cleval(gt, det):
    # the package itself has no 500-detection cap (the competition's wrapper adds it)
    r = evaluate_image(gt, det, pseudo_char_cap=10, convention="cleval", max_detections=None)
    return r.precision, r.recall, r.hmean


def ours_competition(gt, det):
    r = evaluate_image(gt, det)
    return r.precision, r.recall, r.hmean
