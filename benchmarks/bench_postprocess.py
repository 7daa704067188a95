"""Benchmark `hrnet_sweep.dbnet.postprocess.postprocess` against a straightforward reference.

The reference (`tests/reference_postprocess.py`) is the DB paper's post-processing written plainly, candidate by
candidate, the way its public code does it (MhLiao/DB: seg_detector_representer.py):
shapely polygons for areas and perimeters, numpy on every 4-point box, sorted corner
lists, points clamped to [0, W] x [0, H] of the destination as the paper clamps them
(`np.clip(..., 0, dest_width)`); the tests use it as the oracle for `postprocess`.

One difference is allowed and reported: a point the paper puts on the far border
(x = W or y = H) may be at W - 1 / H - 1 in ours, for a post-processing that clamps
into the image's last pixel (`max_polygon_diff(..., size=(H, W))`).

    python benchmarks/bench_postprocess.py            # full run
    python benchmarks/bench_postprocess.py --quick    # a few repeats, small scaling curve
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference lives with the tests

import bench_targets  # noqa: E402
from bench_targets import CLOCKS, median_ms  # noqa: E402
from reference_postprocess import (  # noqa: E402
    border_clamped,
    max_polygon_diff,
    receipt_prob_map,
    reference_postprocess,
)
from reference_targets import IMAGE_SIZE, WORDS  # noqa: E402

from hrnet_sweep.dbnet.postprocess import postprocess  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, short scaling curve")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="thread CPU time or wall-clock")
    args = parser.parse_args(argv)
    bench_targets.CLOCK = args.clock
    cv2.setNumThreads(1)
    repeats = 5 if args.quick else 30
    counts = (18, 72, 144) if args.quick else (18, 72, 144, 288, 500)
    # the reference's own max_candidates; `postprocess` defaults to the config's
    options = {"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.5, "max_candidates": 1000}

    prob, _ = receipt_prob_map(WORDS)
    print(f"postprocess, {IMAGE_SIZE}x{IMAGE_SIZE} map, {WORDS} receipt words, 1 thread, median {args.clock} ms")
    print(f"{'mode':>8} {'found':>6} {'ours ms':>9} {'ref ms':>9} {'speed-up':>9} {'max diff px':>12}")
    worst, clamped = 0.0, 0
    for use_polygon in (False, True):
        ours = postprocess(prob, use_polygon=use_polygon, **options)
        ref = reference_postprocess(prob, use_polygon=use_polygon, **options)
        diff = max_polygon_diff(ours[0], ref[0], prob.shape)
        clamped += border_clamped(ours[0], ref[0], prob.shape)
        worst = max(worst, diff)
        ms = median_ms(
            {
                "ours": lambda: postprocess(prob, use_polygon=use_polygon, **options),
                "ref": lambda: reference_postprocess(prob, use_polygon=use_polygon, **options),
            },
            repeats,
        )
        mode = "polygon" if use_polygon else "box"
        speed_up = ms["ref"] / ms["ours"]
        print(f"{mode:>8} {len(ours[0]):6d} {ms['ours']:9.2f} {ms['ref']:9.2f} {speed_up:8.1f}x {diff:12.2f}")
    print(
        f"polygons within 1 px of the reference: {'ok' if worst <= 1 else 'FAIL'} ({clamped} coordinates at "
        "W - 1 / H - 1 where the paper clamps to W / H)"
    )
    print()
    print(f"{'words':>6} {'found':>6} {'box ms':>8} {'poly ms':>8} {'us/word':>8} {'ref box':>8} {'ref poly':>9}")
    for n in counts:
        p, _ = receipt_prob_map(n, seed=n)
        found = len(postprocess(p, use_polygon=False, **options)[0])
        ms = median_ms(
            {
                "box": lambda: postprocess(p, use_polygon=False, **options),
                "poly": lambda: postprocess(p, use_polygon=True, **options),
                "ref box": lambda: reference_postprocess(p, **options),
                "ref poly": lambda: reference_postprocess(p, use_polygon=True, **options),
            },
            repeats,
        )
        for use_polygon in (False, True):
            diff = max_polygon_diff(
                postprocess(p, use_polygon=use_polygon, **options)[0],
                reference_postprocess(p, use_polygon=use_polygon, **options)[0],
                p.shape,
            )
            worst = max(worst, diff)
        row = f"{n:6d} {found:6d} {ms['box']:8.2f} {ms['poly']:8.2f} {1e3 * ms['poly'] / n:8.1f}"
        print(f"{row} {ms['ref box']:8.2f} {ms['ref poly']:9.2f}")
    print("(us/word: polygon mode; the binarization and contour search are a fixed cost per map)")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
