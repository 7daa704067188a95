"""Which search finds the best detector in the fewest training hours: the embedded engine
replayed on recorded learning curves (`hrnet_sweep.sweep.replay`).

    python benchmarks/sweep_replay.py            # 50 repetitions, 1 and 4 agents, 20 and 40 runs
    python benchmarks/sweep_replay.py --quick    # 6 repetitions, 4 agents, 20 runs (< 2 min)
    python benchmarks/sweep_replay.py --jobs 2 --json docs/sweep_replay.json --plot docs/sweep_replay.png

Each method (a sampler and an `early_terminate`) runs the engine's own code as K agents
on a simulated clock; a suggested configuration gets the recorded curve of the nearest
recorded configuration (`sweep.curves.lookup`). Every method sees the same repetition
seeds. Per method and setting it prints: the best finished run's val/hmean at the end
(median and quartiles over repetitions), the training hours until a finished run came
within 0.005 of the best configuration of the curve file (median and quartiles over the
repetitions that got there; how many did), the hours the sweep took, the share of runs
Hyperband stopped, and in how many sweeps it stopped a run that would have beaten the
sweep's winner. Before that, what the curves say: configurations, seed noise, and the
lookup's leave-one-out error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hrnet_sweep.analysis.plots import regret_curves  # noqa: E402
from hrnet_sweep.errors import UserError  # noqa: E402
from hrnet_sweep.files import atomic_write_json, mapping, read_json  # noqa: E402
from hrnet_sweep.sweep.curves import leave_one_out, read_curves, seed_noise  # noqa: E402
from hrnet_sweep.sweep.replay import CLOCKS, Method, ReplayResult, gp, replay, tpe  # noqa: E402
from hrnet_sweep.sweep.sweepfile import load_sweep  # noqa: E402

CURVES = REPO / "benchmarks" / "data" / "sroie_curves.json"
WITHIN = 0.005

SHIPPED_SWEEP = REPO / "sweeps" / "hrnet_w44_1280.yaml"
SHIPPED_HB = {"type": "hyperband", "min_iter": 5, "eta": 3, "strict": True}
"""Hyperband as the sweep files shipped it before this benchmark chose their setting."""
EARLY = {
    "none": None,
    "hb 5/3": SHIPPED_HB,
    "hb 3/3": {**SHIPPED_HB, "min_iter": 3},
    "hb 8/3": {**SHIPPED_HB, "min_iter": 8},
    "hb 10/3": {**SHIPPED_HB, "min_iter": 10},
    "hb 8/3 loose": {**SHIPPED_HB, "min_iter": 8, "strict": False},
    "hb 10/3 loose": {**SHIPPED_HB, "min_iter": 10, "strict": False},
    # explored with the random sampler, left out of the default table (`--methods random`)
    "hb 5/2": {**SHIPPED_HB, "eta": 2},
    "hb 8/2": {**SHIPPED_HB, "min_iter": 8, "eta": 2},
    "hb 5/3 loose": {**SHIPPED_HB, "strict": False},
    "hb 12/3": {**SHIPPED_HB, "min_iter": 12},
}
"""Early termination: none, or Hyperband `min_iter/eta` (strict: the value at the band;
loose: `strict: false`, the run's best so far); the one shipped before this benchmark
first."""


def early_name(early: Mapping[str, Any] | None) -> str:
    """The `EARLY` name of an `early_terminate` mapping (`none`, `hb 8/3 loose`)."""
    if early is None:
        return "none"
    strict = early.get("strict", True)
    return f"hb {early.get('min_iter')}/{early.get('eta', 3):g}" + ("" if strict else " loose")


def shipped_method() -> str:
    """The method the shipped GPU sweep file runs (its `method` and `early_terminate`),
    as a row name of the table: what a user gets."""
    spec = load_sweep(SHIPPED_SWEEP)
    return f"{spec.method} + {early_name(spec.raw.get('early_terminate'))}"


DEFAULT_EARLY = ("none", "hb 5/3", "hb 3/3", "hb 8/3", "hb 10/3", "hb 8/3 loose", "hb 10/3 loose")
"""The early terminations of the default table; the others only when their sampler is
named (`--methods random`) or the method itself (`--methods 'bayes + hb 5/2'`)."""
SAMPLERS = {
    "random": ("random", None),
    "bayes": ("bayes", None),  # the engine's own mapping (make_sampler)
    "tpe-s3": ("bayes", tpe(3)),
    "tpe-s2x": ("bayes", tpe(lambda cap: max(3, min(20, (cap or 40) // 2)))),
    "gp": ("bayes", gp(lambda cap: max(3, min(10, (cap or 40) // 4)))),
}
"""Samplers: random; `bayes` as the engine maps it today (TPE, multivariate, constant
liar, startup cap/4 within 3-10); TPE with 3 startup runs; TPE with twice the startup
(cap/2, up to 20); Optuna's GPSampler with the engine's startup count."""


OPT_IN = ("tpe-s2x", "gp")
"""Samplers left out unless named (`--methods gp`): GPSampler takes 1-8 s of CPU per
replayed sweep here (TPE: under a second; 50 repetitions of two methods in the four
settings, 400 replays, took 18 min on 2 cores); TPE with the longer startup measured like
`bayes` in a first look (10 repetitions)."""


def methods(names: Sequence[str] | None = None) -> dict[str, Method]:
    """Every sampler x early termination (`names`: only these methods, or every method of
    these samplers; by default all but the `OPT_IN` samplers, with the `DEFAULT_EARLY` ones)."""
    out = {}
    for s, (kind, sampler) in SAMPLERS.items():
        for e, early in EARLY.items():
            name = f"{s} + {e}"
            default = s not in OPT_IN and e in DEFAULT_EARLY
            if (names is None and default) or (names is not None and (name in names or s in names)):
                out[name] = Method(name, kind, early, sampler)
    return out


def _one(task: tuple[str, str, int, int, int, str]) -> dict:
    curves_path, name, agents, cap, seed, clock = task
    curves = _curves(curves_path)
    t0 = time.perf_counter()
    result = replay(curves, methods([name])[name], agents=agents, run_cap=cap, seed=seed, clock=clock)
    return _summary(result, curves.best_value(), time.perf_counter() - t0)


_CACHE: dict = {}


def _curves(path: str):
    if path not in _CACHE:
        _CACHE[path] = read_curves(path)
    return _CACHE[path]


def _summary(r: ReplayResult, best_value: float, seconds: float) -> dict:
    win = r.winner()
    return {
        "trajectory": r.trajectory(),
        "best": None if win is None else win.value,
        "hours_to": r.hours_to(best_value - WITHIN),
        "hours": r.compute_s(max(x.end_s for x in r.runs)) / 3600.0,
        "runs": len(r.runs),
        "stopped": sum(x.state == "stopped" for x in r.runs),
        "winner_stopped": r.stopped_the_winner(),
        "replay_s": seconds,
    }


def _q(xs: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(q1), float(q2), float(q3)


def hours_to(res: Sequence[dict]) -> tuple[float, float, float, int]:
    """Quartiles (q1, median, q3) of the hours to within `WITHIN` over repetitions, and
    how many got there. A repetition that never got there counts as infinitely slow: the
    median exists only when more than half got there."""
    got = [x["hours_to"] for x in res if x["hours_to"] is not None]
    padded = sorted(got) + [math.inf] * (len(res) - len(got))
    if not padded:
        return math.inf, math.inf, math.inf, 0
    n = len(padded)
    med = padded[n // 2] if n % 2 else 0.5 * (padded[n // 2 - 1] + padded[n // 2])
    q1, q3 = np.percentile(np.asarray(padded), [25, 75], method="nearest")
    return float(q1), med, float(q3), len(got)


def winner_stopped(res: Sequence[dict]) -> float:
    """Share of repetitions in which early termination stopped a run that would have won."""
    return sum(x["winner_stopped"] for x in res) / len(res)


def table(rows: dict[str, list[dict]], shipped: str = "") -> list[str]:
    head = (
        "| method | best val/hmean, median [q1, q3] | hours to within 0.005, median [q1, q3] (reached) "
        "| hours spent | runs stopped | winner stopped |"
    )
    out = [head, "|---|---|---|---:|---:|---:|"]
    for name, res in rows.items():
        best = _q([x["best"] if x["best"] is not None else 0.0 for x in res])
        q1, med, q3, got = hours_to(res)
        hours = float(np.median([x["hours"] for x in res]))
        stopped = sum(x["stopped"] for x in res) / max(1, sum(x["runs"] for x in res))
        label = f"**{name}** (shipped)" if name == shipped else name
        out.append(
            f"| {label} | {best[1]:.4f} [{best[0]:.4f}, {best[2]:.4f}] | {_h(med)} [{_h(q1)}, {_h(q3)}] "
            f"({got}/{len(res)}) | {hours:.2f} | {stopped:.0%} | {winner_stopped(res):.0%} |"
        )
    return out


def goal(rows: dict[str, list[dict]], shipped: str) -> str | None:
    """The shipped method against random search without early stopping: its median hours to
    within `WITHIN` as a share of random's (goal: at most 0.5) and how often it stopped the
    winner (goal: under 5%)."""
    if shipped not in rows or "random + none" not in rows:
        return None
    ours, base = hours_to(rows[shipped])[1], hours_to(rows["random + none"])[1]
    ratio = ours / base if math.isfinite(ours) and math.isfinite(base) and base > 0 else math.inf
    return (
        f"goal: {shipped} reaches it in {_h(ours)} h, random + none in {_h(base)} h: "
        f"{'never' if not math.isfinite(ratio) else f'{ratio:.2f}x'} (goal <= 0.5x); "
        f"winner stopped in {winner_stopped(rows[shipped]):.0%} of sweeps (goal < 5%)"
    )


def _h(x: float) -> str:
    return "never" if not math.isfinite(x) else f"{x:.2f}"


def describe(curves) -> list[str]:
    """What the curve file holds: configurations, the best, seed noise, lookup error."""
    noise, loo = seed_noise(curves), leave_one_out(curves)
    values = sorted((curves.config_value(g) for g in curves.configs), reverse=True)
    typical = sum(curves.typical_epoch_s) + curves.typical_end_s
    durations = [c.duration_s for c in curves.runs]
    return [
        f"curves: {curves.source}: {len(curves.runs)} runs, {len(curves.configs)} configurations, "
        f"{curves.epochs} epochs; a run on the typical clock {typical / 60:.1f} min "
        f"(recorded: {min(durations) / 60:.1f}-{max(durations) / 60:.1f})",
        f"best configuration {values[0]:.4f}; within {WITHIN}: {sum(v >= values[0] - WITHIN for v in values)} "
        f"configuration(s); median {np.median(values):.4f}; worst {values[-1]:.4f}",
        f"seed noise ({noise['configs']} configurations x {noise['seeds']} seeds): best val/hmean sd "
        f"{noise['best_sd']:.4f} (mean abs difference of two seeds {noise['best_mad']:.4f}); per-epoch sd "
        f"{noise['epoch_sd']:.4f}",
        *(
            f"  seeds of lr={g[0].params.get('models.optimizer.lr', math.nan):.3g}: best val/hmean "
            + " ".join(f"{c.best:.4f}" for c in sorted(g, key=lambda c: c.seed))
            + f" (sd {np.std([c.best for c in g], ddof=1):.4f})"
            for g in curves.configs
            if len(g) > 1
        ),
        f"lookup leave-one-out (nearest other configuration): best val/hmean mean abs error "
        f"{loo['best_mae']:.4f} (median {loo['best_median']:.4f}); per-epoch RMSE {loo['epoch_rmse']:.4f}",
    ]


def _run(args: argparse.Namespace, chosen: Mapping[str, Method]) -> tuple[list[tuple], list[dict]]:
    """Every repetition of every method and setting, on `args.jobs` processes."""
    tasks = [
        (args.curves, name, k, cap, seed, args.clock)
        for k in args.agents
        for cap in args.budgets
        for name in chosen
        for seed in range(args.reps)
    ]
    print(
        f"{len(tasks)} replays ({len(chosen)} methods x {len(args.agents)} x {len(args.budgets)} settings "
        f"x {args.reps} repetitions), {args.jobs} process(es)",
        flush=True,
    )
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
    chunk = max(1, len(tasks) // (40 * args.jobs))
    done = map(_one, tasks) if pool is None else pool.map(_one, tasks, chunksize=chunk)
    results = []
    for result in done:
        results.append(result)
        if len(results) % max(1, len(tasks) // 10) == 0:
            print(f"  {len(results)}/{len(tasks)} replays, {time.perf_counter() - t0:.0f} s", flush=True)
    if pool is not None:
        pool.shutdown()
    return [(n, k, c, s) for _, n, k, c, s, _ in tasks], results


def _load(path: str, curves) -> list[dict]:
    """The repetitions a `--json` run wrote, checked: they must be of these curves."""
    doc = mapping(read_json(path), path)
    if doc.get("target") != curves.best_value():
        raise UserError(f"{path}: its target {doc.get('target')!r} is not the curve file's best {curves.best_value()}")
    rows = doc.get("results")
    need = ("method", "agents", "run_cap", "seed", "trajectory", "best", "hours_to", "hours", "runs", "stopped")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in need) for r in rows):
        raise UserError(f"{path}: results must be a list of repetitions with {', '.join(need)}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", default=str(CURVES), help="curve file (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="6 repetitions, 4 agents, 20 runs, 4 methods")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--budgets", type=int, nargs="+", default=[20, 40], help="run caps")
    ap.add_argument("--methods", nargs="+", help="method or sampler names (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="processes")
    ap.add_argument(
        "--clock",
        choices=CLOCKS,
        default="typical",
        help="typical: every run at the median epoch times of the file; recorded: each at its own",
    )
    ap.add_argument("--json", help="write every repetition's summary here")
    ap.add_argument("--load", metavar="JSON", help="tabulate and plot the repetitions a --json run wrote, no replay")
    ap.add_argument("--plot", help="PNG: median regret against training hours, one line per method")
    ap.add_argument(
        "--plot-methods",
        nargs="+",
        help="methods drawn in the plot (default: each sampler without early stopping, with the "
        "Hyperband shipped before this benchmark and with the shipped one)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.agents, args.budgets = 6, [4], [20]
        quick = ["random + none", "bayes + none", "bayes + hb 5/3", shipped_method()]
        args.methods = args.methods or list(dict.fromkeys(quick))
    chosen = methods(args.methods)
    if not chosen:
        print(f"error: no method matches {args.methods}; names look like 'bayes + hb 5/3'", file=sys.stderr)
        return 2
    shipped = shipped_method()
    curves = _curves(args.curves)
    for line in describe(curves):
        print(line, flush=True)
    t0 = time.perf_counter()
    if args.load:
        rows_read = _load(args.load, curves)
        keys = [(r["method"], r["agents"], r["run_cap"], r["seed"]) for r in rows_read]
        results = [{k: v for k, v in r.items() if k not in ("method", "agents", "run_cap", "seed")} for r in rows_read]
        print(f"{len(results)} replays read from {args.load}", flush=True)
    else:
        keys, results = _run(args, chosen)
    by: dict[tuple[int, int], dict[str, list[dict]]] = {}
    for (name, k, cap, _), res in zip(keys, results):
        by.setdefault((k, cap), {}).setdefault(name, []).append(res)
    for (k, cap), rows in by.items():
        reps = max(len(v) for v in rows.values())
        print(f"\n{k} agent(s), run cap {cap}, {reps} repetitions; target {curves.best_value():.4f} - {WITHIN}")
        for line in table(rows, shipped):
            print(line)
        if (line := goal(rows, shipped)) is not None:
            print(line)
    if not args.load:
        print(f"\n{len(results)} replays in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        doc = {
            "curves": args.curves,
            "target": curves.best_value(),
            "within": WITHIN,
            "results": [
                {"method": n, "agents": k, "run_cap": c, "seed": s, **r} for (n, k, c, s), r in zip(keys, results)
            ],
        }
        print(f"wrote {atomic_write_json(args.json, doc)}")
    if args.plot:
        names = list(dict.fromkeys(n for n, *_ in keys))
        early = {"none", early_name(SHIPPED_HB), shipped.split(" + ", 1)[1]}
        drawn = set(args.plot_methods or [n for n in names if n.split(" + ", 1)[1] in early])
        panels = [
            (f"{k} agent(s), {cap} runs", {n: [x["trajectory"] for x in rows[n]] for n in rows if n in drawn})
            for (k, cap), rows in by.items()
        ]
        print(f"wrote {regret_curves(args.plot, panels, target=curves.best_value(), within=WITHIN)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:  # a damaged curve file or --load file: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
