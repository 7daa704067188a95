"""CLEval of one image: pseudo characters, candidate pairs, matching and scoring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..constants import MAX_DETECTIONS
from ._pairs import _candidate_pairs, _convex_pair_areas, _points_inside, _shapely_pair_areas
from ._polygons import Convention, _convex_orientation, _Options, _owners, _pack, _shoelace_area
from ._pseudo_chars import _fp_counts, _gt_counts, _pcc_cleval, _pcc_competition
from ._results import ImageResult, _scores


def evaluate_image(
    gt_polys: Sequence[np.ndarray],
    det_polys: Sequence[np.ndarray],
    *,
    pseudo_char_cap: int = 100,
    area_precision_constraint: float = 0.3,
    granularity_penalty: float = 1.0,
    vertical_aspect_ratio_thresh: float = 0.5,
    max_detections: int | None = MAX_DETECTIONS,
    convention: Convention = "competition",
) -> ImageResult:
    """CLEval detection scores of one image; polygons are (K, 2) arrays of pixels.

    Detections past `max_detections` are dropped, then polygons with fewer than 4 points
    are skipped (GT and detections). See `hrnet_sweep.metric` for the conventions.
    """
    opts = _Options.make(
        pseudo_char_cap=pseudo_char_cap,
        area_precision_constraint=area_precision_constraint,
        granularity_penalty=granularity_penalty,
        vertical_aspect_ratio_thresh=vertical_aspect_ratio_thresh,
        max_detections=max_detections,
        convention=convention,
    )
    return _evaluate_image(gt_polys, det_polys, opts)


def _evaluate_image(gt_polys, det_polys, opts: _Options) -> ImageResult:
    # the competition's dataset rounds GT points to int32 before scoring
    G = _pack(gt_polys, convention=opts.convention, round_points=opts.convention == "competition")
    D = _pack(det_polys, opts.max_detections, convention=opts.convention, what="detection")
    n, m = G.n, D.n

    lengths = _gt_counts(G, opts)  # pseudo characters per GT box, >= 1 each
    if opts.convention == "cleval":
        pcc = _pcc_cleval(G.raw, lengths, opts.vertical_thresh)
    else:
        pcc = _pcc_competition(G.raw, G.k, lengths)
    pcc_start = np.cumsum(lengths) - lengths

    # candidate pairs: GT envelope (polygon and PCCs) against detection boxes
    g = d = np.zeros(0, dtype=np.int64)
    if n and m:
        gb = np.concatenate(
            [
                np.minimum(G.ints.min(1), np.minimum.reduceat(pcc, pcc_start, axis=1)),
                np.maximum(G.ints.max(1), np.maximum.reduceat(pcc, pcc_start, axis=1)),
            ]
        )
        db = np.concatenate([D.ints.min(1), D.ints.max(1)])
        g, d = _candidate_pairs(gb, db)

    # area precision |G & D| / |D| on the integer polygons, kept as float32 like CLEval
    inter = np.zeros(len(g))
    if len(g):
        overlap = (np.minimum(gb[2, g], db[2, d]) > np.maximum(gb[0, g], db[0, d])) & (
            np.minimum(gb[3, g], db[3, d]) > np.maximum(gb[1, g], db[1, d])
        )
        og, od = _convex_orientation(G.ints, G.k), _convex_orientation(D.ints, D.k)
        fast = overlap & (og[g] != 0) & (od[d] != 0)
        slow = overlap & ~fast
        if fast.any():
            gf, df = g[fast], d[fast]
            inter[fast] = _convex_pair_areas(
                G.ints[:, :, gf], og[gf].astype(float), D.ints[:, :, df], od[df].astype(float)
            )
        if slow.any():
            inter[slow] = _shapely_pair_areas(G, D, g[slow], d[slow])
    det_area = _shoelace_area(D.ints)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(det_area[d] > 0, inter / det_area[d], 0.0).astype(np.float32)
    ap_ok = ap >= np.float32(opts.ap_constraint)

    # PCC containment for every candidate pair
    test_pair, rank = _owners(lengths[g])
    test_pcc = pcc_start[g][test_pair] + rank
    inside = _points_inside(pcc[0, test_pcc], pcc[1, test_pcc], D.ints[:, :, d[test_pair]])
    pcnt = np.bincount(test_pair[inside], minlength=len(g))

    # matching: one-to-one, one-to-many (split), many-to-one (merge)
    has = pcnt > 0
    q = ap_ok & has
    row_q = np.bincount(g[q], minlength=n)
    col_q = np.bincount(d[q], minlength=m)
    col_p = np.bincount(d[has], minlength=m)
    ap_sum = np.bincount(d[has], weights=ap[has].astype(np.float64), minlength=m)  # GT order, like CLEval
    merge_det = (col_p >= 2) & (ap_sum >= opts.ap_constraint)
    matched = (q & (row_q[g] == 1) & (col_q[d] == 1)) | (q & (row_q[g] >= 2)) | (has & merge_det[d])

    # scoring
    per_gt = np.bincount(g[matched], minlength=n)
    per_det = np.bincount(d[matched], minlength=m)
    covered = inside & matched[test_pair]
    num_char_det_matched = int(covered.sum())
    tp = int(np.count_nonzero(np.bincount(test_pcc[covered], minlength=pcc.shape[1])))
    gran_r = float(np.maximum(per_gt - 1, 0).sum()) * opts.gran_weight
    gran_p = float(np.maximum(per_det - 1, 0).sum()) * opts.gran_weight
    num_char_fp = int(_fp_counts(D.take(np.flatnonzero(per_det == 0)), opts).sum())
    num_char_gt = int(lengths.sum())
    num_char_det = num_char_det_matched + num_char_fp
    precision, recall, hmean = _scores(tp, gran_r, gran_p, num_char_gt, num_char_det)
    return ImageResult(
        precision=precision,
        recall=recall,
        hmean=hmean,
        num_gt=n,
        num_det=m,
        num_char_gt=num_char_gt,
        num_char_det=num_char_det,
        num_char_tp=tp,
        num_char_fp=num_char_fp,
        gran_recall=gran_r,
        gran_precision=gran_p,
        num_splitted=int((per_gt > 1).sum()),
        num_merged=int((per_det > 1).sum()),
        num_char_overlapped=num_char_det_matched - tp,
    )
