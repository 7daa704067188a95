"""Post-processing search on cached probability maps: `tune_postprocess(maps, gts, grid)`.

The maps are computed once (the retrain's out-of-fold maps, `ensemble.cache_oof_maps`);
no setting ever re-runs the network. The search is cheap where the algorithm allows:

- `thresh` changes the binary map, `unclip_ratio` the polygons and `use_polygon` the
  shape, so each (thresh, unclip_ratio, use_polygon) is one post-processing pass, run at
  the smallest `box_thresh` of the grid;
- `box_thresh` only drops candidates whose score (mean probability inside, independent
  of the unclip) is below it, so every `box_thresh` is a filter on that pass's scores;
- the macro H-Mean is a mean over images, so images are split across worker processes
  and each worker scores its images under every setting;
- a coarse grid first, then a finer one around the best coarse setting (`refine`).

`hrnet_sweep tune-postprocess PRESET_OR_RETRAIN_DIR` caches the maps, searches, prints
the table and writes the best values into the preset (`models.postprocess.*`) and the
k-fold summary.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..formats import atomic_write_json, read_json
from .presets import write_postprocess

if TYPE_CHECKING:
    from .ensemble import Retrain

__all__ = ["Grid", "Setting", "apply_tuned_postprocess", "main", "parse_grid", "score_settings", "tune_postprocess"]

PARAMS = ("thresh", "box_thresh", "unclip_ratio", "use_polygon")
TUNE_FILE = "tune_postprocess.json"


@dataclass(frozen=True)
class Setting:
    thresh: float
    box_thresh: float
    unclip_ratio: float
    use_polygon: bool

    def as_dict(self) -> dict:
        return {"thresh": self.thresh, "box_thresh": self.box_thresh, "unclip_ratio": self.unclip_ratio,
                "use_polygon": self.use_polygon}


@dataclass(frozen=True)
class Grid:
    """Values to search. `refine`: after the coarse grid, search half-steps around the best."""

    thresh: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)
    box_thresh: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    unclip_ratio: tuple[float, ...] = (1.3, 1.5, 1.7, 2.0)
    use_polygon: tuple[bool, ...] = (True, False)
    refine: bool = True

    def __post_init__(self) -> None:
        for name in PARAMS:
            values = getattr(self, name)
            if not values:
                raise UserError(f"grid {name}: no values")
        for name in ("thresh", "box_thresh"):
            bad = [v for v in getattr(self, name) if not 0 < v < 1]
            if bad:
                raise UserError(f"grid {name}={bad[0]}: allowed 0 < value < 1")
        bad = [v for v in self.unclip_ratio if not v > 0]
        if bad:
            raise UserError(f"grid unclip_ratio={bad[0]}: allowed value > 0")

    def settings(self) -> list[Setting]:
        return [Setting(t, b, u, p) for p in self.use_polygon for t in self.thresh for u in self.unclip_ratio
                for b in self.box_thresh]


def _half_steps(values: Sequence[float], best: float, lo: float, hi: float) -> tuple[float, ...]:
    """The best value and half a grid step either side, kept inside (lo, hi)."""
    vals = sorted(set(values))
    steps = [b - a for a, b in zip(vals, vals[1:])]
    half = (min(steps) if steps else abs(best) * 0.1 or 0.05) / 2
    out = {round(best, 4)}
    for v in (best - half, best + half):
        if lo < v < hi:
            out.add(round(v, 4))
    return tuple(sorted(out))


def _refined(grid: Grid, best: Setting) -> Grid:
    return Grid(thresh=_half_steps(grid.thresh, best.thresh, 0, 1),
                box_thresh=_half_steps(grid.box_thresh, best.box_thresh, 0, 1),
                unclip_ratio=_half_steps(grid.unclip_ratio, best.unclip_ratio, 0, math.inf),
                use_polygon=(best.use_polygon,), refine=False)


# ----------------------------------------------------------------------------- scoring


def _as_prob(m: Any) -> np.ndarray:
    """A cached map (uint8 0..255, float 0..1, or a PNG path) as float32 0..1."""
    if isinstance(m, (str, os.PathLike)):
        import cv2

        path = m
        m = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise UserError(f"{path}: cannot read the cached map")
    m = np.asarray(m)
    if m.dtype == np.uint8:
        return m.astype(np.float32) / 255.0
    return m.astype(np.float32, copy=False)


def _score_chunk(items: list[tuple], settings: Sequence[Setting], fixed: Mapping[str, Any]) -> np.ndarray:
    """Per setting: summed per-image (precision, recall, hmean) over `items`.

    items: (map or path, image size (h, w) or None, GT polygons).
    """
    from ..metric import evaluate_image
    from ..dbnet.postprocess import postprocess

    passes: dict[tuple, list[Setting]] = {}
    for s in settings:
        passes.setdefault((s.thresh, s.unclip_ratio, s.use_polygon), []).append(s)
    index = {s: i for i, s in enumerate(settings)}
    sums = np.zeros((len(settings), 3), np.float64)
    for source, image_size, gt in items:
        prob = _as_prob(source)
        size = tuple(image_size) if image_size is not None else prob.shape
        for (thresh, unclip, poly), group in passes.items():
            polys, scores = postprocess(prob, thresh=thresh, box_thresh=min(s.box_thresh for s in group),
                                        unclip_ratio=unclip, use_polygon=poly, content_size=prob.shape,
                                        image_size=size, **fixed)
            scores = np.asarray(scores, np.float64)
            for s in group:
                kept = [p for p, sc in zip(polys, scores) if sc >= s.box_thresh]
                r = evaluate_image(gt, kept)
                sums[index[s]] += (r.precision, r.recall, r.hmean)
    return sums


def score_settings(items: Sequence[tuple], settings: Sequence[Setting], *, fixed: Mapping[str, Any] | None = None,
                   workers: int = 1) -> list[dict]:
    """Macro precision / recall / H-Mean of every setting over `items` (see `_score_chunk`)."""
    fixed = dict(fixed or {})
    items = list(items)
    if not items:
        raise UserError("no probability maps to tune on")
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        sums = _score_chunk(items, settings, fixed)
    else:
        chunks = [items[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            sums = sum(pool.map(_score_chunk, chunks, [settings] * workers, [fixed] * workers))
    n = len(items)
    return [{**s.as_dict(), "precision": float(p / n), "recall": float(r / n), "hmean": float(h / n)}
            for s, (p, r, h) in zip(settings, sums)]


def _rank(rows: list[dict]) -> list[dict]:
    # ties: the setting closest to the DB paper's defaults wins, then polygons
    return sorted(rows, key=lambda r: (-round(r["hmean"], 9), abs(r["thresh"] - 0.3) + abs(r["box_thresh"] - 0.6)
                                       + abs(r["unclip_ratio"] - 1.5), not r["use_polygon"]))


def tune_postprocess(maps: Mapping[str, Any], gts: Mapping[str, Sequence[np.ndarray]], grid: Grid | None = None, *,
                     image_sizes: Mapping[str, tuple[int, int]] | None = None,
                     fixed: Mapping[str, Any] | None = None, workers: int = 1) -> tuple[dict, list[dict]]:
    """Search post-processing settings on cached probability maps.

    Args:
        maps: image name -> probability map (float 0..1 or uint8 0..255, any size: it is
            taken to cover the whole image) or the path of a cached PNG.
        gts: image name -> ground-truth polygons in original image pixels.
        grid: the values to search (default `Grid()`).
        image_sizes: image name -> (h, w) of the original image, when a map is smaller.
        fixed: other `postprocess` arguments (`max_candidates`, `min_size`).
        workers: processes scoring images in parallel.

    Returns:
        The best setting (with its precision, recall, hmean) and the table of every
        setting tried, best first. Ranked by macro H-Mean (per image, as the competition).
    """
    grid = grid or Grid()
    missing = sorted(set(gts) - set(maps))
    if missing:
        raise UserError(f"{len(missing)} ground-truth images have no cached map, e.g. {missing[:3]}")
    items = [(maps[n], (image_sizes or {}).get(n), list(gts[n])) for n in sorted(gts)]
    rows = score_settings(items, grid.settings(), fixed=fixed, workers=workers)
    for r in rows:
        r["stage"] = "coarse"
    if grid.refine:
        best = Setting(**{k: _rank(rows)[0][k] for k in PARAMS})
        fine = [s for s in _refined(grid, best).settings()
                if not any(Setting(**{k: r[k] for k in PARAMS}) == s for r in rows)]
        if fine:
            extra = score_settings(items, fine, fixed=fixed, workers=workers)
            rows += [{**r, "stage": "refine"} for r in extra]
    table = _rank(rows)
    return dict(table[0]), table


# ----------------------------------------------------------------------------- recording the result


def apply_tuned_postprocess(target: Retrain, best: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                            table: Sequence[Mapping[str, Any]], *, write_preset: bool = True) -> list[Path]:
    """Record the tuning: `<retrain>/tune_postprocess.json`, the summary's `postprocess`
    entry and, when the preset is a YAML file, its `models.postprocess.*`."""
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    values = {k: best[k] for k in PARAMS}
    written = [atomic_write_json(target.root / TUNE_FILE, {
        "best": dict(best), "baseline": dict(baseline) if baseline else None, "table": list(table), "date": date,
    }, indent=1)]
    preset_file = target.preset_file if write_preset else None
    if preset_file is not None:
        was = f", preset's own {baseline['hmean']:.4f}" if baseline else ""
        note = f"out-of-fold H-Mean {best['hmean']:.4f}{was} ({date}, {target.root / TUNE_FILE})"
        written.append(write_postprocess(preset_file, values, note))
    if write_preset:
        summary = read_json(target.summary_path)
        summary["postprocess"] = {"best": values, "hmean": best["hmean"],
                                  "baseline_hmean": baseline["hmean"] if baseline else None, "date": date,
                                  "preset": str(preset_file) if preset_file else None}
        written.append(atomic_write_json(target.summary_path, summary, indent=2))
    return written


# ----------------------------------------------------------------------------- CLI


def parse_grid(args: Sequence[str], base: Grid | None = None) -> Grid:
    """`thresh=0.2,0.3 box_thresh=0.5 unclip_ratio=1.5,2 mode=polygon,box` -> Grid."""
    grid = base or Grid()
    changes: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not text.strip():
            raise UserError(f"--grid {arg!r}: expected KEY=V1,V2,... with KEY one of {', '.join(PARAMS)}, mode")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if key in ("mode", "use_polygon"):
            table = {"polygon": True, "poly": True, "true": True, "box": False, "false": False}
            bad = [v for v in values if v.lower() not in table]
            if bad:
                raise UserError(f"--grid {arg!r}: {bad[0]!r} is not polygon/box (or true/false)")
            changes["use_polygon"] = tuple(dict.fromkeys(table[v.lower()] for v in values))
        elif key in PARAMS:
            try:
                changes[key] = tuple(float(v) for v in values)
            except ValueError:
                raise UserError(f"--grid {arg!r}: values must be numbers") from None
        else:
            raise UserError(f"--grid {arg!r}: unknown key {key!r}; allowed {', '.join(PARAMS)}, mode")
    return replace(grid, **changes)


def print_table(table: Sequence[dict], baseline: dict | None, top: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"post-processing on out-of-fold maps: top {min(top, len(table))} of {len(table)} settings")
    for col in ("#", "mode", "thresh", "box_thresh", "unclip", "H-Mean", "precision", "recall", "stage"):
        t.add_column(col, justify="right")
    rows = list(table[:top]) + ([{**baseline, "stage": "preset"}] if baseline else [])
    for i, r in enumerate(rows, 1):
        t.add_row(str(i) if r.get("stage") != "preset" else "-", "polygon" if r["use_polygon"] else "box",
                  f"{r['thresh']:.3g}", f"{r['box_thresh']:.3g}", f"{r['unclip_ratio']:.3g}", f"{r['hmean']:.4f}",
                  f"{r['precision']:.4f}", f"{r['recall']:.4f}", r.get("stage", ""))
    Console().print(t)


def main(argv: Sequence[str] | None = None) -> int:
    from .ensemble import cache_oof_maps, resolve_retrain

    ap = argparse.ArgumentParser(prog="hrnet_sweep tune-postprocess", description=(
        "Tune thresh, box_thresh, unclip_ratio and box/polygon mode on the retrain's out-of-fold probability "
        "maps (cached once), then write the best values into the preset."))
    ap.add_argument("target", help="the preset given to kfold, its retrain folder, or a kfold_summary.json")
    ap.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="values to search, e.g. thresh=0.2,0.3 box_thresh=0.5,0.6 unclip_ratio=1.5,2 mode=polygon,box")
    ap.add_argument("--no-refine", action="store_true", help="coarse grid only")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="scoring processes")
    ap.add_argument("--max-side", type=int, default=1024, help="cached maps are at most this many pixels on a side")
    ap.add_argument("--device", help="device for computing missing maps (default: cuda if available)")
    ap.add_argument("--no-write", action="store_true", help="only report; do not change the preset")
    ap.add_argument("--top", type=int, default=10, help="rows of the table")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    grid = parse_grid(args.grid, Grid(refine=not args.no_refine))
    target = resolve_retrain(args.target)
    cache = cache_oof_maps(target, max_side=args.max_side, device=args.device)
    print(f"tuning on {len(cache.paths)} out-of-fold maps of folds {cache.folds} ({cache.root}); "
          f"{len(grid.settings())} coarse settings, {args.workers} worker(s)", flush=True)
    pp = target.cfg.models.postprocess
    fixed = {"max_candidates": pp.max_candidates, "min_size": pp.min_size}
    best, table = tune_postprocess(cache.paths, cache.gts, grid, image_sizes=cache.sizes, fixed=fixed,
                                   workers=args.workers)
    current = Setting(pp.thresh, pp.box_thresh, pp.unclip_ratio, pp.use_polygon)
    baseline = next((r for r in table if Setting(**{k: r[k] for k in PARAMS}) == current), None)
    if baseline is None:
        items = [(cache.paths[n], cache.sizes.get(n), cache.gts[n]) for n in sorted(cache.gts)]
        baseline = score_settings(items, [current], fixed=fixed, workers=args.workers)[0]
    print_table(table, baseline, args.top)
    print(f"best: {'polygon' if best['use_polygon'] else 'box'} mode, thresh {best['thresh']}, box_thresh "
          f"{best['box_thresh']}, unclip_ratio {best['unclip_ratio']}: H-Mean {best['hmean']:.4f} "
          f"(preset's own setting: {baseline['hmean']:.4f})")
    written = apply_tuned_postprocess(target, best, baseline, table, write_preset=not args.no_write)
    for path in written:
        print(f"wrote {path}")
    return 0
