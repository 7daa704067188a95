"""Training data pipeline throughput on one core: JPEG decode, augmentation, DBNet
targets and collate, at the training resolution (1280 px by default).

    .venv/bin/python benchmarks/bench_data.py [--size 1280] [--images 40] [--eval]

Uses ../shared/data/sroie-mini (or $HRNET_SWEEP_SROIE) when present, otherwise makes
synthetic receipt-like JPEGs (~70 slanted words each) in a temporary folder. Runs the
real `DetectionDataset.__getitem__` and `collate` in one process with torch / OpenCV /
BLAS limited to one thread, and times each stage by wrapping the functions it calls, so
the slow part shows. Samples are compact (uint8 image and 0/1 maps); ImageNet
normalisation runs on the batch on the training device (`data.to_network_input`), so it
is not a data-worker cost. Target: >= 15 images/s per core, i.e. a 1280 px DBNet training at
~30 images/s on a GPU is fed by two workers.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import sys  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # run from a checkout

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hrnet_sweep.dbnet import data as data_mod  # noqa: E402
from hrnet_sweep.dbnet import targets as targets_mod  # noqa: E402
from hrnet_sweep.formats import load_annotations  # noqa: E402

TARGET_PER_CORE = 15.0
SROIE = Path(
    os.environ.get("HRNET_SWEEP_SROIE", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sroie-mini")
)


def synthetic(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` 960x1280 receipt-like JPEGs with ~70 slanted dark words; annotation JSON."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(count):
        h, w = 1280, 960
        img = np.full((h, w, 3), 235, np.uint8) + rng.integers(0, 15, (h, w, 1), dtype=np.uint8)
        words = {}
        for k in range(int(rng.integers(50, 90))):
            x, y = rng.uniform(20, w - 260), rng.uniform(20, h - 40)
            bw, bh, slant = rng.uniform(40, 240), rng.uniform(12, 30), rng.uniform(-0.05, 0.05)
            quad = np.array([[x, y], [x + bw, y + bw * slant], [x + bw, y + bw * slant + bh], [x, y + bh]])
            cv2.fillPoly(img, [quad.round().astype(np.int32)], (40, 40, 40))
            words[f"{k:04d}"] = {"points": quad.round(1).tolist()}
        name = f"synth_{i:03d}.jpg"
        cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images[name] = {"img_w": w, "img_h": h, "words": words}
    path = folder / "train.json"
    path.write_text(json.dumps({"images": images}))
    return path


class _Timer:
    """CPU seconds (user + system, this thread) per stage. On a machine shared with other
    jobs wall-clock time measures the neighbours; CPU time measures this pipeline."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, stage, fn):
        def timed(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.thread_time() - t0

        return timed


class _TimedCall:
    """Stands in for an object whose calls are timed; everything else reaches the object."""

    def __init__(self, inner, timed):
        self._inner, self._timed = inner, timed

    def __call__(self, *args, **kwargs):
        return self._timed(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1280, help="input height = width (default 1280)")
    parser.add_argument("--images", type=int, default=40, help="images to time (default 40)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--eval", action="store_true", help="eval transform instead of training augmentation")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if (SROIE / "train.json").is_file():
            source, ann_path, image_dir = f"sroie-mini ({SROIE})", SROIE / "train.json", SROIE / "images"
        else:
            source, image_dir = "synthetic 960x1280 JPEGs", Path(tmp)
            ann_path = synthetic(image_dir, min(args.images, 16))
        anns = load_annotations(ann_path)
        names = sorted(anns)
        timer = _Timer()
        data_mod.read_image = timer.wrap("decode", data_mod.read_image)
        targets_mod.make_targets = timer.wrap("targets", targets_mod.make_targets)
        pipeline = data_mod.build_transforms(None, args.size, args.size, train=not args.eval)
        pipeline.compose = _TimedCall(pipeline.compose, timer.wrap("augment", pipeline.compose))  # letterbox + augment
        ds = data_mod.DetectionDataset(image_dir, anns, names, pipeline)
        collate = timer.wrap("collate", data_mod.collate)

        ds[0]  # warm-up: imports, first allocations
        timer.seconds.clear()
        words, batch = 0, []
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(args.images):
            sample = ds[i % len(ds)]
            words += len(sample["polygons"])
            batch.append(sample)
            if len(batch) == args.batch_size:
                collate(batch)
                batch = []
        wall, total = time.perf_counter() - t0, time.thread_time() - c0

    rate = args.images / total
    stages = dict(timer.seconds)
    stages["other (polygon fit, meta)"] = max(0.0, total - sum(stages.values()))
    print(f"data pipeline, {'eval' if args.eval else 'train'} transform, {args.size}x{args.size}, one core")
    print(f"source: {source}; {args.images} images, {words / args.images:.0f} words per image, batch {args.batch_size}")
    print(f"{'stage (CPU time)':<30}{'ms/image':>10}{'share':>8}")
    for stage, sec in stages.items():
        print(f"{stage:<30}{1000 * sec / args.images:>10.1f}{100 * sec / total:>7.0f}%")
    verdict = "OK" if rate >= TARGET_PER_CORE else "BELOW TARGET"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"throughput: {rate:.1f} images/s per core of CPU time (target >= {TARGET_PER_CORE:.0f}): {verdict}")
    print(f"wall clock: {args.images / wall:.1f} images/s (load average {load:.1f} on {os.cpu_count()} CPUs)")
    if args.json:
        print(
            json.dumps(
                {
                    "images_per_s_per_core": rate,
                    "wall_images_per_s": args.images / wall,
                    "target": TARGET_PER_CORE,
                    "ms_per_image": {k: 1000 * v / args.images for k, v in stages.items()},
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
