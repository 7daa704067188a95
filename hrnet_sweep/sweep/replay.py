"""A sweep replayed on recorded learning curves: the engine's own code, a simulated clock.

`replay(curves, method, agents=K, run_cap=N, seed=S)` runs the embedded engine as K
agents would, with training replaced by recorded curves (`sweep.curves`):

- The sweep is the curve file's sweep document with the method's `method` and
  `early_terminate` (its searched parameters unchanged), created by `LocalSweep.create`
  in a temporary folder on an in-memory Optuna storage; each simulated agent opens its
  own `LocalSweep` on that storage, with its own sampler, as agent processes do.
- An idle agent asks `LocalSweep.suggest` for a run. The run's curve is
  `curves.lookup(params)`: the nearest recorded configuration, one of its seeds.
- The run's values arrive on the replay's clock: `clock="typical"` (the default) gives
  every run the median over all recorded runs of each epoch's seconds
  (`CurveSet.typical_epoch_s`), `clock="recorded"` each curve its own `Curve.epoch_s`.
  The default is a deliberate deviation from "each curve at its own times": every run
  trains the same network on the same receipts at the same canvas, so its epoch costs
  the same whatever the configuration (the post-processing search aside, a few seconds
  more on the speckled maps of early epochs); the recorded times differ by up to 5x only
  because the recording machine was shared with other work, and that noise would charge
  some configurations hours they did not cost. At each arrival the
  run first checks its `STOP` file, as training does after each validation, then its
  agent reports the value (`LocalSweep.report`); after every arrival each running run is
  checked with `agent.check_hyperband`, the agents' own Hyperband step (it writes `STOP`
  and records the decision). A run that finds `STOP` ends after that validation.
- At its end the run is closed as the agent closes it (`agent.classify_exit` on the
  status training would write, `LocalSweep.finish`), `end_s` after its last value.

What is simulated, on purpose: agents start together (the launcher staggers them by
seconds; runs take minutes to hours); an agent checks Hyperband at every arrival of any
run (a real agent checks every 5 s and on its own values); the time between runs (a
launch, under a second) is not counted.

A `Method` is a sampler and an `early_terminate`. Its `sampler` is None for the engine's
own mapping (`_space.make_sampler`: what `method: bayes` or `random` gets today), or a
function building another Optuna sampler, for the alternatives the benchmark compares.
"""

from __future__ import annotations

import heapq
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from ..ranking import RunRecord, rank_runs
from ..runfolder import best_in_history, stop_requested
from ._space import tpe_sampler
from .agent import check_hyperband, classify_exit
from .curves import Curve, CurveSet, lookup
from .engine import LocalSweep, Suggestion

__all__ = ["CLOCKS", "Method", "ReplayResult", "RunTrace", "replay"]

SamplerFactory = Callable[[int | None, int], optuna.samplers.BaseSampler]
"""(run_cap, seed) -> an Optuna sampler."""


@dataclass(frozen=True)
class Method:
    """How a replayed sweep searches: `method` (`bayes`, `random`), an optional sampler
    other than the engine's for that method, and `early_terminate` (a W&B
    `early_terminate` mapping, or None)."""

    name: str
    method: str = "bayes"
    early_terminate: Mapping[str, Any] | None = None
    sampler: SamplerFactory | None = None

    def sweep_doc(self, curves: CurveSet, run_cap: int) -> dict:
        """The replayed sweep's document: the curve file's searched parameters, this
        method, its early stopping and the run cap."""
        doc = {
            "name": f"replay-{self.name}",
            "method": self.method,
            "metric": {"name": curves.meta.get("metric", "val/hmean"), "goal": "maximize"},
            "run_cap": run_cap,
            "parameters": {k: curves.sweep["parameters"][k] for k in curves.space},
            "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"],
        }
        if self.early_terminate is not None:
            doc["early_terminate"] = dict(self.early_terminate)
        return doc


@dataclass(frozen=True)
class RunTrace:
    """One replayed run: when it ran (simulated seconds), its curve and how it ended."""

    run_id: str
    agent: int
    params: dict[str, Any]
    curve: Curve
    start_s: float
    end_s: float
    state: str  # finished | stopped
    value: float | None  # what the engine recorded (finished runs: the run's best val/hmean)
    history: tuple[float, ...]  # the values the run logged
    stop: dict | None  # the Hyperband decision the engine recorded, if one stopped it

    @property
    def epochs(self) -> int:
        return len(self.history)


@dataclass
class ReplayResult:
    """The runs of one replayed sweep, in the order they started."""

    runs: list[RunTrace] = field(default_factory=list)
    engine_runs: list = field(default_factory=list)
    """The sweep's runs as the engine holds them at the end (`LocalSweep.runs()`)."""

    def compute_s(self, t: float) -> float:
        """Training seconds spent by all agents up to simulated time `t`."""
        return float(sum(max(0.0, min(r.end_s, t) - r.start_s) for r in self.runs))

    def trajectory(self) -> list[tuple[float, float]]:
        """(training hours spent, best finished value so far) at each run's end, in time
        order: the best as `hrnet_sweep best` would report it then (finished runs only)."""
        out, best = [], None
        for r in sorted(self.runs, key=lambda r: r.end_s):
            if r.state == "finished" and r.value is not None and (best is None or r.value > best):
                best = r.value
            out.append((self.compute_s(r.end_s) / 3600.0, best))
        return out

    def winner(self) -> RunTrace | None:
        """The run `hrnet_sweep best` picks (`ranking.rank_runs`: the best finished run)."""
        best = rank_runs(RunRecord(r.run_id, r.state, history=r.history) for r in self.runs).best
        return None if best is None else next(r for r in self.runs if r.run_id == best.run.id)

    def hours_to(self, target: float) -> float | None:
        """Training hours until a finished run reached `target` (None: never)."""
        for hours, best in self.trajectory():
            if best is not None and best >= target:
                return hours
        return None

    def stopped_the_winner(self) -> bool:
        """True when Hyperband stopped a run that, trained to the end, would have beaten
        the sweep's winner (its recorded curve's best)."""
        win = self.winner()
        bar = -1.0 if win is None else win.value
        return any(r.state == "stopped" and r.curve.best > bar for r in self.runs)


@dataclass
class _Running:
    sweep: LocalSweep
    sug: Suggestion
    curve: Curve
    start_s: float
    history: list[float] = field(default_factory=list)
    stop_reason: str | None = None  # the agent's Hyperband decision, once made
    stop_seen: bool = False  # training found STOP after its last validation: it ends now


CLOCKS = ("typical", "recorded")


def replay(
    curves: CurveSet,
    method: Method,
    *,
    agents: int,
    run_cap: int,
    seed: int,
    clock: str = "typical",
    workdir: str | Path | None = None,
) -> ReplayResult:
    """Replay one sweep of `method` with `agents` agents until `run_cap` runs ended, on
    the `clock` (`typical` or `recorded`, see the module docstring)."""
    if agents < 1 or run_cap < 1:
        raise ValueError("agents and run_cap must be >= 1")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    with tempfile.TemporaryDirectory(prefix="replay-", dir=workdir) as tmp:
        return _Replay(curves, method, agents, run_cap, seed, Path(tmp), clock).run()


class _Replay:
    def __init__(self, curves: CurveSet, method: Method, agents: int, run_cap: int, seed: int, tmp: Path, clock: str):
        self.curves, self.method, self.clock = curves, method, clock
        self.rng = np.random.default_rng(seed)
        spec_path = tmp / "sweep.yaml"
        spec_path.write_text(yaml.safe_dump(method.sweep_doc(curves, run_cap), sort_keys=False), encoding="utf-8")
        storage = optuna.storages.InMemoryStorage()
        seeds = [int(s) for s in self.rng.integers(2**31, size=agents)]
        first = LocalSweep.create(spec_path, sweep_dir=tmp / "sweep", storage=storage, sampler_seed=seeds[0])
        self.sweeps = [first] + [LocalSweep(first.root, storage=storage, sampler_seed=s) for s in seeds[1:]]
        if method.sampler is not None:
            for sw, s in zip(self.sweeps, seeds):
                sw.study.sampler = method.sampler(run_cap, s)
        self.events: list[tuple[float, int, int]] = []  # (time, sequence, agent)
        self.seq = 0
        self.running: dict[int, _Running] = {}
        self.result = ReplayResult()

    def _at(self, t: float, agent: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, agent))

    def _start(self, agent: int, t: float) -> None:
        sw = self.sweeps[agent]
        sug = sw.suggest(agent=f"replay-agent-{agent}")
        if sug is None:
            return  # run cap reached: this agent is done
        curve = lookup(self.curves, sug.params, self.rng)
        self.running[agent] = _Running(sw, sug, curve, t)
        self._at(t + self._epoch_s(curve)[0], agent)

    def _epoch_s(self, curve: Curve) -> tuple[float, ...]:
        return curve.epoch_s if self.clock == "recorded" else self.curves.typical_epoch_s

    def _end_s(self, curve: Curve) -> float:
        return curve.end_s if self.clock == "recorded" else self.curves.typical_end_s

    def run(self) -> ReplayResult:
        for agent in range(len(self.sweeps)):
            self._start(agent, 0.0)
        while self.events:
            t, _, agent = heapq.heappop(self.events)
            run = self.running[agent]
            if run.stop_seen or len(run.history) == len(run.curve.hmean):
                self._end(agent, t)
                continue
            self._value(agent, run, t)
        self.result.runs.sort(key=lambda r: r.start_s)  # stable: agents in order at equal times
        self.result.engine_runs = self.sweeps[0].runs()
        return self.result

    def _value(self, agent: int, run: _Running, t: float) -> None:
        k = len(run.history)
        value = run.curve.hmean[k]
        run.stop_seen = stop_requested(run.sug.control_dir)  # training: after each validation
        run.history.append(value)
        run.sweep.report(run.sug.number, [value], k)
        for other in self.running.values():  # each agent's Hyperband step
            if other.stop_reason is None:
                other.stop_reason = check_hyperband(other.sweep, other.sug)
        last = k + 1 == len(run.curve.hmean)
        self._at(t + (self._end_s(run.curve) if last or run.stop_seen else self._epoch_s(run.curve)[k + 1]), agent)

    def _end(self, agent: int, t: float) -> None:
        run = self.running.pop(agent)
        found = best_in_history(run.history)
        stopped = run.stop_seen
        status = {"state": "stopped" if stopped else "finished", "best": None if found is None else found[1]}
        outcome = classify_exit(0, status, run.history, stop_reason=run.stop_reason)
        run.sweep.finish(run.sug.number, outcome)
        stop = None
        if run.stop_reason is not None:
            stop = next(r.stop for r in run.sweep.runs() if r.run_id == run.sug.run_id)
        self.result.runs.append(
            RunTrace(
                run.sug.run_id,
                agent,
                dict(run.sug.params),
                run.curve,
                run.start_s,
                t,
                outcome.state,
                outcome.value,
                tuple(run.history),
                stop,
            )
        )
        self._start(agent, t)


# ----------------------------------------------------------------------------- samplers


def tpe(startup: int | Callable[[int | None], int]) -> SamplerFactory:
    """The engine's TPE settings (multivariate, constant liar) with another startup count."""

    def make(run_cap: int | None, seed: int) -> optuna.samplers.BaseSampler:
        return tpe_sampler(startup(run_cap) if callable(startup) else startup, seed=seed)

    return make


def gp(startup: int | Callable[[int | None], int]) -> SamplerFactory:
    """Optuna's GPSampler (learns from finished runs only; stopped runs are invisible to it)."""

    def make(run_cap: int | None, seed: int) -> optuna.samplers.BaseSampler:
        n = startup(run_cap) if callable(startup) else startup
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(n_startup_trials=n, seed=seed)

    return make
