"""Benchmark `hrnet_sweep.metric` against the `cleval` package on the same inputs.

    .venv/bin/python benchmarks/bench_metric.py [--images 50] [--boxes 72] [--repeats 3]

Builds deterministic receipt-like images (rows of word boxes, integer and float, some
tilted) with jittered, split, merged, dropped and false-positive detections; times
`evaluate_image` per image (convention "cleval", cap 10, no detection cap: what the
package computes; and the default "competition" convention) and the package's own `evaluation`; prints the times
per image, the speed-up, the largest |difference| of precision / recall / H-Mean (must be
<= 1e-6) and how the time grows with boxes per image. Times are the best of `--repeats`
passes, in wall-clock and CPU seconds (CPU time is steadier on a shared machine). Without
the package installed only our half runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference lives with the tests
from reference_metric import make_images, ours_cleval, ours_competition, package_image  # noqa: E402

# ----------------------------------------------------------------------------- timing


def timed(fn, images, repeats: int):
    """(results, best wall s/image, best CPU s/image) over `repeats` passes."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        results = [fn(gt, det) for gt, det in images]
        best_wall = min(best_wall, (time.perf_counter() - w0) / len(images))
        best_cpu = min(best_cpu, (time.process_time() - c0) / len(images))
    return np.array(results), best_wall, best_cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--boxes", type=int, default=72)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="18,72,144,288,500", help="boxes per image for the scaling table")
    parser.add_argument("--scaling-images", type=int, default=4, help="images per size in the scaling table")
    parser.add_argument("--no-cleval", action="store_true", help="skip the package even if installed")
    args = parser.parse_args(argv)

    have_pkg = False
    if not args.no_cleval:
        try:
            import cleval  # noqa: F401

            have_pkg = True
        except ImportError:
            print("cleval package not installed: timing hrnet_sweep.metric only (pip install cleval to compare)\n")

    images = make_images(args.images, args.boxes, args.seed)
    n_det = np.mean([len(d) for _, d in images])
    print(
        f"{args.images} images, {args.boxes} GT boxes and {n_det:.1f} detections per image, "
        f"best of {args.repeats} passes"
    )
    ours_cleval(*images[0]), ours_competition(*images[0])  # warm-up (imports)
    if have_pkg:
        package_image(*images[0])  # warm-up: the package compiles numba functions
    res_ours, wall_ours, cpu_ours = timed(ours_cleval, images, args.repeats)
    _, wall_comp, cpu_comp = timed(ours_competition, images, args.repeats)
    print(f"{'':38}{'wall ms/img':>12}{'CPU ms/img':>12}")
    print(f"{'hrnet_sweep.metric (cleval, cap 10)':38}{wall_ours * 1e3:12.3f}{cpu_ours * 1e3:12.3f}")
    print(f"{'hrnet_sweep.metric (competition)':38}{wall_comp * 1e3:12.3f}{cpu_comp * 1e3:12.3f}")
    ok = True
    if have_pkg:
        res_pkg, wall_pkg, cpu_pkg = timed(package_image, images, args.repeats)
        diff = float(np.abs(res_pkg - res_ours).max())
        ok = diff <= 1e-6
        print(f"{'cleval package':38}{wall_pkg * 1e3:12.3f}{cpu_pkg * 1e3:12.3f}")
        print(f"speed-up vs the package: {wall_pkg / wall_ours:.1f}x wall, {cpu_pkg / cpu_ours:.1f}x CPU")
        print(f"max |difference| of precision/recall/hmean: {diff:.3g} ({'OK' if ok else 'FAIL'}: must be <= 1e-6)")

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"\nscaling ({args.scaling_images} images per size, CPU ms per image; us per GT box)")
    header = f"{'boxes':>6}{'ours':>10}{'us/box':>9}{'competition':>13}{'us/box':>9}"
    print(header + (f"{'cleval pkg':>12}{'us/box':>9}{'max diff':>10}" if have_pkg else ""))
    for n in sizes:
        imgs = make_images(args.scaling_images, n, args.seed + n)
        r_ours, _, c_ours = timed(ours_cleval, imgs, args.repeats)
        _, _, c_comp = timed(ours_competition, imgs, args.repeats)
        line = f"{n:6d}{c_ours * 1e3:10.2f}{c_ours * 1e6 / n:9.1f}{c_comp * 1e3:13.2f}{c_comp * 1e6 / n:9.1f}"
        if have_pkg:
            r_pkg, _, c_pkg = timed(package_image, imgs, 1)
            d = float(np.abs(r_pkg - r_ours).max())
            ok &= d <= 1e-6
            line += f"{c_pkg * 1e3:12.1f}{c_pkg * 1e6 / n:9.1f}{d:10.2g}"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
