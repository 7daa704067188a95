"""Benchmark `hrnet_sweep.dbnet.targets.make_targets` against a straightforward reference.

The reference (`tests/reference_targets.py`) is the DB paper's target algorithm written plainly, polygon by
polygon and edge by edge, over the whole bounding box in float64, the way its public
code does it (MhLiao/DB: make_seg_detection_data.py, make_border_map.py), polygons
clamped and those counter-clockwise on screen reversed first, as its
`validate_polygons` does; the tests use it as the oracle for `make_targets`.

    python benchmarks/bench_targets.py            # full run
    python benchmarks/bench_targets.py --quick    # a few repeats, small scaling curve
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference lives with the tests

from reference_targets import IMAGE_SIZE, WORDS, receipt_words, reference_targets  # noqa: E402

from hrnet_sweep.dbnet.targets import make_targets  # noqa: E402

# ----------------------------------------------------------------------------- timing


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}
CLOCK = "cpu"
"""The machine these run on may be shared: by default a call is timed by the CPU time
of this thread (everything runs on it), which other processes hardly disturb; `--clock
wall` times wall-clock instead."""


def median_ms(fns: dict, repeats: int) -> dict:
    """Median milliseconds of each function, called in turn (so that a change in the
    machine's load touches all of them alike)."""
    clock = CLOCKS[CLOCK]
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def max_map_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, short scaling curve")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="thread CPU time or wall-clock")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = args.clock
    cv2.setNumThreads(1)
    repeats = 3 if args.quick else 15
    counts = (18, 72, 144) if args.quick else (18, 72, 144, 288, 500)

    polys = receipt_words(WORDS)
    diff = max_map_diff(make_targets(polys, IMAGE_SIZE, IMAGE_SIZE), reference_targets(polys, IMAGE_SIZE, IMAGE_SIZE))
    ms = median_ms(
        {
            "ours": lambda: make_targets(polys, IMAGE_SIZE, IMAGE_SIZE),
            "reference": lambda: reference_targets(polys, IMAGE_SIZE, IMAGE_SIZE),
            "allocation": lambda: make_targets([], IMAGE_SIZE, IMAGE_SIZE),
        },
        repeats,
    )
    print(f"make_targets, {IMAGE_SIZE}x{IMAGE_SIZE}, {WORDS} receipt words, 1 thread, median {CLOCK} ms")
    print(f"{'ours':>12} {ms['ours']:9.2f}   (of which {ms['allocation']:.2f} allocating the four maps)")
    print(f"{'reference':>12} {ms['reference']:9.2f}")
    print(f"{'speed-up':>12} {ms['reference'] / ms['ours']:8.1f}x")
    print(f"max abs diff over the four maps: {diff:.2e} ({'ok' if diff <= 1e-3 else 'FAIL'})")
    print()
    print(f"{'words':>6} {'ours ms':>9} {'us/word':>8} {'ref ms':>9} {'speed-up':>9} {'max diff':>9}")
    worst = diff
    for n in counts:
        p = receipt_words(n, seed=n)
        t = median_ms(
            {
                "ours": lambda: make_targets(p, IMAGE_SIZE, IMAGE_SIZE),
                "ref": lambda: reference_targets(p, IMAGE_SIZE, IMAGE_SIZE),
            },
            repeats,
        )
        d = max_map_diff(make_targets(p, IMAGE_SIZE, IMAGE_SIZE), reference_targets(p, IMAGE_SIZE, IMAGE_SIZE))
        worst = max(worst, d)
        per_word = 1e3 * (t["ours"] - ms["allocation"]) / n
        print(f"{n:6d} {t['ours']:9.2f} {per_word:8.1f} {t['ref']:9.2f} {t['ref'] / t['ours']:8.1f}x {d:9.1e}")
    print("(us/word: time per word after the allocation; flat or falling = linear or better)")
    return 0 if worst <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
