"""`hrnet_sweep tune-postprocess`: the post-processing search on a retrain's out-of-fold maps.

The maps are computed once (the retrain's out-of-fold maps, `ensemble.cache_oof_maps`);
no setting ever re-runs the network. The search itself (`tune_postprocess`, `Grid`,
`score_settings`) is `hrnet_sweep.dbnet.validation`'s, the one that also runs at every
validation epoch; this module adds the CLI, the grid syntax and the recording.

`hrnet_sweep tune-postprocess PRESET_OR_RETRAIN_DIR` caches the maps, searches, prints
the table and writes the best values into the preset (`models.postprocess.*`) and the
k-fold summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dbnet.validation import PARAMS, Grid, Setting, score_settings, tune_postprocess
from ..errors import UserError
from ..files import atomic_write_json
from ..machine import cap_count, usable_cores
from ..numeric import flag, number_text
from .presets import write_postprocess
from .retrain import read_summary, retrain_lock

if TYPE_CHECKING:
    from .ensemble import Retrain

__all__ = ["Grid", "Setting", "apply_tuned_postprocess", "main", "parse_grid", "score_settings", "tune_postprocess"]

TUNE_FILE = "tune_postprocess.json"


# ----------------------------------------------------------------------------- recording the result


def apply_tuned_postprocess(
    target: Retrain,
    best: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    table: Sequence[Mapping[str, Any]],
    *,
    write_preset: bool = True,
) -> list[Path]:
    """Record the tuning: `<retrain>/tune_postprocess.json`, the summary's `postprocess`
    entry and, when the preset is a YAML file, its `models.postprocess.*`."""
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    values = {k: best[k] for k in PARAMS}
    written = [
        atomic_write_json(
            target.root / TUNE_FILE,
            {
                "best": dict(best),
                "baseline": dict(baseline) if baseline else None,
                "table": list(table),
                "date": date,
                "notes": list(target.notes),
            },
            indent=1,
        )
    ]
    preset_file = target.preset_file if write_preset else None
    if preset_file is not None:
        was = f", preset's own {baseline['hmean']:.4f}" if baseline else ""
        note = f"out-of-fold H-Mean {best['hmean']:.4f}{was} ({date}, {target.root / TUNE_FILE})"
        written.extend(write_postprocess(preset_file, values, note, backup=True))
    if write_preset:
        summary = read_summary(target.summary_path)
        summary["postprocess"] = {
            "best": values,
            "hmean": best["hmean"],
            "baseline_hmean": baseline["hmean"] if baseline else None,
            "date": date,
            "preset": str(preset_file) if preset_file else None,
        }
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
            numbers = [number_text(v) for v in values]
            bad = [v for v, n in zip(values, numbers) if n is None or n <= 0]
            if bad:
                raise UserError(f"--grid {arg!r}: {bad[0]!r} is not a finite positive number")
            changes[key] = tuple(float(n) for n in numbers)
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
        t.add_row(
            str(i) if r.get("stage") != "preset" else "-",
            "polygon" if r["use_polygon"] else "box",
            f"{r['thresh']:.3g}",
            f"{r['box_thresh']:.3g}",
            f"{r['unclip_ratio']:.3g}",
            f"{r['hmean']:.4f}",
            f"{r['precision']:.4f}",
            f"{r['recall']:.4f}",
            r.get("stage", ""),
        )
    Console().print(t)


def tune_retrain(
    target: Retrain,
    grid: Grid,
    *,
    workers: int,
    device: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> tuple[dict, dict, list[dict]]:
    """Search `grid` on a retrain's out-of-fold maps (cached once); (best, the preset's own
    setting scored the same way, the table best first). `tune-postprocess` and the demo."""
    from .ensemble import cache_oof_maps

    say = say or (lambda line: print(line, flush=True))
    cache = cache_oof_maps(target, device=device, progress=progress)
    say(
        f"tuning on {len(cache.paths)} out-of-fold maps of folds {cache.folds} ({cache.root}); "
        f"{len(grid.settings())} coarse settings, {workers} worker(s)"
    )
    pp = target.cfg.models.postprocess
    fixed = {"max_candidates": pp.max_candidates, "min_size": pp.min_size}
    best, table = tune_postprocess(cache.paths, cache.gts, grid, image_sizes=cache.sizes, fixed=fixed, workers=workers)
    current = Setting.of(pp)
    baseline = next((r for r in table if Setting.of(r) == current), None)
    if baseline is None:
        items = [(cache.paths[n], cache.sizes.get(n), cache.gts[n]) for n in sorted(cache.gts)]
        baseline = score_settings(items, [current], fixed=fixed, workers=workers)[0]
    return best, baseline, table


def main(argv: Sequence[str] | None = None) -> int:
    from .ensemble import resolve_retrain

    ap = argparse.ArgumentParser(
        prog="hrnet_sweep tune-postprocess",
        description=(
            "Tune thresh, box_thresh, unclip_ratio and box/polygon mode on the retrain's out-of-fold probability "
            "maps (cached once), then write the best values into the preset."
        ),
    )
    ap.add_argument("target", help="the preset given to kfold, its retrain folder, or a kfold_summary.json")
    ap.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="KEY=V1,V2",
        help="values to search, e.g. thresh=0.2,0.3 box_thresh=0.5,0.6 unclip_ratio=1.5,2 mode=polygon,box",
    )
    ap.add_argument("--no-refine", action="store_true", help="coarse grid only")
    ap.add_argument(
        "--workers", type=flag(int, ge=1), default=min(8, usable_cores()), help="scoring processes (at most the cores)"
    )
    ap.add_argument("--device", help="device for computing missing maps (default: cuda if available)")
    ap.add_argument("--no-write", action="store_true", help="only report; do not change the preset")
    ap.add_argument("--top", type=flag(int, ge=1), default=10, help="rows of the table")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    grid = parse_grid(args.grid, Grid(refine=not args.no_refine))
    workers = cap_count(args.workers, "--workers", work=len(grid.settings()), work_name="settings", minimum=1)
    target = resolve_retrain(args.target)
    with retrain_lock(target.root):  # the cache and the summary: one writer at a time (kfold included)
        return _tune_locked(target, grid, workers, args)


def _tune_locked(target: Retrain, grid: Grid, workers: int, args: argparse.Namespace) -> int:
    best, baseline, table = tune_retrain(target, grid, workers=workers, device=args.device)
    print_table(table, baseline, args.top)
    print(
        f"best: {'polygon' if best['use_polygon'] else 'box'} mode, thresh {best['thresh']}, box_thresh "
        f"{best['box_thresh']}, unclip_ratio {best['unclip_ratio']}: H-Mean {best['hmean']:.4f} "
        f"(preset's own setting: {baseline['hmean']:.4f})"
    )
    written = apply_tuned_postprocess(target, best, baseline, table, write_preset=not args.no_write)
    for path in written:
        print(f"wrote {path}")
    return 0
