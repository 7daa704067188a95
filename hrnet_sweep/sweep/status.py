"""`hrnet_sweep status` (a table of a local sweep's runs) and `hrnet_sweep clean`
(delete the checkpoints of runs outside the top N, never the best run's).

Both read a sweep in a folder, or in a database (`--storage URL SWEEP_ID`), where each
run's files are on the disk of the machine that ran it: `status` names the host and the
folder of each run (and of the winner), `clean` deletes what is on this machine and
lists the rest by host."""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Sequence

from ..numeric import flag
from ..ranking import order_runs
from .engine import LocalSweep, RunInfo, add_sweep_flags, delete_files, open_sweep
from .winner import winner

__all__ = ["main_clean", "main_status", "plan_clean", "rank_runs", "render_status", "sweep_summary"]

_STYLE = {"running": "cyan", "finished": "green", "stopped": "yellow", "failed": "red", "crashed": "magenta"}


def rank_runs(runs: Sequence[RunInfo], goal: str) -> list[RunInfo]:
    """Runs with a finite best metric, best first, by the rule of `hrnet_sweep best`."""
    return order_runs(runs, goal)


def best_run(runs: Sequence[RunInfo], goal: str) -> RunInfo | None:
    """The best finished run: what `hrnet_sweep best` picks (`winner.winner`, ties broken by
    epoch as there), or None."""
    best = winner(runs, goal)
    return None if best is None else next(r for r in runs if r.run_id == best.run.id)


def sweep_summary(sweep: LocalSweep, runs: Sequence[RunInfo]) -> dict:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    best = best_run(runs, sweep.spec.metric_goal)
    return {
        "sweep_id": sweep.sweep_id,
        "folder": str(sweep.root),
        "storage": sweep.location if sweep.in_database else "folder",
        "name": sweep.spec.name,
        "method": sweep.spec.method,
        "metric": sweep.spec.metric_name,
        "goal": sweep.spec.metric_goal,
        "run_cap": sweep.run_cap,
        "runs": len(runs),
        "counts": counts,
        "done": sweep.exhausted(),
        "best": None
        if best is None
        else {
            "run_id": best.run_id,
            "value": best.best,
            "params": best.params,
            "host": best.host,
            "run_dir": best.run_dir,
        },
    }


def _short_params(run: RunInfo, searched: Sequence[str]) -> str:
    parts = []
    for k in searched:
        if k in run.params:
            v = run.params[k]
            parts.append(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}")
    return " ".join(parts)


def _duration(run: RunInfo) -> str:
    if run.started_at is None:
        return ""
    s = int((run.ended_at or time.time()) - run.started_at)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _note(r: RunInfo) -> str:
    if r.state == "stopped" and r.stop and r.stop.get("band") is not None:
        cmp = "<" if r.stop.get("value", 0) < r.stop.get("threshold", 0) else ">"
        return f"hyperband: band {r.stop['band']} value {r.stop['value']:.4f} {cmp} threshold {r.stop['threshold']:.4f}"
    return r.reason or ""


def render_status(sweep: LocalSweep, runs: Sequence[RunInfo] | None = None, console=None) -> None:
    """Print the sweep header and one table row per run (rich)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: full rows rather than 80 folded columns
            console = Console(width=220)
    runs = list(sweep.runs() if runs is None else runs)
    summary = sweep_summary(sweep, runs)
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items()) or "no runs yet"
    cap = f" of run cap {sweep.run_cap}" if sweep.run_cap else ""
    done = f"; done: {summary['done']}" if summary["done"] else ""
    console.print(
        f"[bold]sweep {sweep.sweep_id}[/bold] ({sweep.spec.method}, {sweep.spec.metric_goal} "
        f"{sweep.spec.metric_name}) {sweep.location}"
    )
    if sweep.in_database:
        console.print(f"run folders on this machine ({socket.gethostname()}): {sweep.root / 'runs'}")
    console.print(f"{len(runs)} run(s){cap}: {counts}{done}")
    best = best_run(runs, sweep.spec.metric_goal)
    searched = list(sweep.spec.searched())
    metric = sweep.spec.metric_name or "metric"
    table = Table(show_lines=False)
    for col, kw in (
        ("run", {}),
        ("state", {}),
        (f"best {metric}", {"justify": "right"}),
        ("values", {"justify": "right"}),
        ("params", {}),
        ("time", {"justify": "right"}),
        *([("host", {})] if sweep.in_database else []),
        ("stop / reason", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)
    for r in runs:
        note = _note(r)
        style = _STYLE.get(r.state, "")
        table.add_row(
            r.run_id + (" *" if best is not None and r.run_id == best.run_id else ""),
            f"[{style}]{r.state}[/{style}]" if style else r.state,
            "" if r.best is None else f"{r.best:.4f}",
            str(r.epochs),
            _short_params(r, searched),
            _duration(r),
            *([r.host or ""] if sweep.in_database else []),
            note or "",
        )
    console.print(table)
    if best is not None:
        console.print(f"best: run {best.run_id} {metric} {best.best:.4f}  (* in the table)")
        if sweep.in_database and best.run_dir:
            console.print(f"  its files: {best.host}:{best.run_dir}")


def plan_clean(runs: Sequence[RunInfo], keep_top: int, goal: str) -> tuple[list[RunInfo], list[RunInfo]]:
    """(runs whose checkpoints stay, runs whose checkpoints go): the top `keep_top` by best
    metric plus the best finished run stay; running runs are never touched."""
    if keep_top < 0:
        raise ValueError(f"keep_top {keep_top} must be >= 0")
    keep_ids = {r.run_id for r in rank_runs(runs, goal)[:keep_top]}
    best = best_run(runs, goal)
    if best is not None:
        keep_ids.add(best.run_id)
    keep = [r for r in runs if r.run_id in keep_ids or r.state == "running"]
    drop = [r for r in runs if r not in keep]
    return keep, drop


def _list_database(url: str) -> int:
    """`status --storage URL` without a sweep: the sweeps in that database."""
    from ._database import DatabaseURL, list_sweeps

    sweeps = list_sweeps(url)
    print(f"{len(sweeps)} sweep(s) in {DatabaseURL(url).display}")
    for m in sorted(sweeps, key=lambda m: m.get("created_at") or 0):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("created_at") or 0))
        print(f"  {m['sweep_id']}  {when}  {m.get('method')}  {m['runs']} run(s)  {m.get('name') or ''}".rstrip())
    return 0


def main_status(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep status",
        description="Runs of a local sweep: state, "
        "params, best metric, logged values, Hyperband stop or failure reason.",
    )
    ap.add_argument("sweep", nargs="?", help="sweep folder or local sweep id (with --storage and no SWEEP: list them)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_sweep_flags(ap)
    args = ap.parse_args(list(argv or []))
    if args.sweep is None and args.storage:
        return _list_database(args.storage)
    sweep = open_sweep(args)
    runs = sweep.runs()
    if args.json:
        print(
            json.dumps(
                {"sweep": sweep_summary(sweep, runs), "runs": [r.to_dict() for r in runs]}, indent=2, default=str
            )
        )
    else:
        render_status(sweep, runs)
    return 0


def main_clean(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep clean",
        description="Delete the checkpoints of runs outside "
        "the top N by best metric (never the best run's); report the bytes freed.",
    )
    ap.add_argument("sweep", nargs="?", help="sweep folder or local sweep id (with --storage: the sweep id)")
    ap.add_argument("--keep-top", type=flag(int, ge=0), required=True, metavar="N", help="runs whose checkpoints stay")
    ap.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    add_sweep_flags(ap)
    args = ap.parse_args(list(argv or []))
    sweep = open_sweep(args)
    runs = sweep.runs()
    keep, drop = plan_clean(runs, args.keep_top, sweep.spec.metric_goal)
    verb = "would free" if args.dry_run else "freed"
    total = 0
    elsewhere: dict[str, list[str]] = {}
    for r in drop:
        if not sweep.is_here(r):  # its files are on the disk of the machine that ran it
            elsewhere.setdefault(r.host or "?", []).append(r.run_id)
            continue
        files = r.checkpoints()
        if not files:
            continue
        freed = delete_files(files, dry_run=args.dry_run)
        total += freed
        score = "n/a" if r.best is None else f"{r.best:.4f}"
        print(
            f"{r.run_id} ({r.state}, best {score}): {verb} {freed / 1e6:.1f} MB in {len(files)} file(s)"
            + ("".join(f"\n    {p}" for p in files) if args.dry_run else "")
        )
    kept = ", ".join(r.run_id for r in keep if r.state != "running") or "none"
    print(f"{verb} {total / 1e6:.1f} MB ({total} bytes); checkpoints kept for: {kept}")
    for host, ids in sorted(elsewhere.items()):
        print(
            f"on {host}: {len(ids)} run(s) outside the top {args.keep_top} ({', '.join(ids)}) keep their checkpoints "
            f"there; run the same `hrnet_sweep clean` on {host}"
        )
    return 0
