"""Overhead of the embedded sweep engine: per suggestion, per reported value, per
Hyperband check, and per run launch by an agent.

    python benchmarks/bench_engine.py [--trials 60] [--launches 10]

Suggestion cost is measured on the user's real search space (sweeps/hrnet_w44_1280.yaml:
TPE over 3 log-uniform floats and 1 categorical), each trial reporting 6 metric values,
as the study grows. Launch overhead is the wall time of an agent running N trivial runs
(tests/fake_train.py, 1 epoch of 0 s) minus the time of starting that script N times
directly: ask + launch + follow + tell, without the training itself.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hrnet_sweep.sweep.agent import run_agent  # noqa: E402
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome  # noqa: E402
from hrnet_sweep.sweep.hyperband import RunRecord, hyperband_stop  # noqa: E402


def _ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:6.1f} ms, max {max(xs) * 1e3:6.1f} ms"


def bench_suggest(root: Path, n: int) -> None:
    sweep = LocalSweep.create(REPO / "sweeps" / "hrnet_w44_1280.yaml", sweeps_root=root, run_cap=n + 10)
    rng = random.Random(0)
    buckets: dict[str, list[float]] = {}
    report, tell, hb = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        s = sweep.suggest(agent="bench")
        dt = time.perf_counter() - t0
        lo = max(10, i // 20 * 20)
        key = "random startup (runs 0-9)" if i < 10 else f"TPE (runs {lo}-{i // 20 * 20 + 19})"
        buckets.setdefault(key, []).append(dt)
        history = []
        for step in range(6):
            history.append(rng.random())
            t0 = time.perf_counter()
            sweep.report(s.number, [history[-1]], step)
            report.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            records = [RunRecord(r.run_id, r.state, r.history) for r in sweep.runs()]
            hyperband_stop(records, sweep.spec.early_terminate, goal="maximize")
            hb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sweep.finish(s.number, RunOutcome("finished", value=max(history), exit_code=0))
        tell.append(time.perf_counter() - t0)
    print(f"suggest (ask + run record, under the engine lock), {n} trials:")
    for key, xs in buckets.items():
        print(f"  {key:<32} {_ms(xs)}")
    print(f"report one metric value           {_ms(report)}")
    print(f"hyperband check (read all runs)   {_ms(hb)}  (at up to {n} runs)")
    print(f"finish (outcome + tell)           {_ms(tell)}")
    journal = sweep.root / "optuna.journal"
    print(f"journal size after {n} runs: {journal.stat().st_size / 1e3:.0f} kB")


def bench_launch(root: Path, n: int) -> None:
    doc = {
        "method": "random",
        "metric": {"name": "val/hmean", "goal": "maximize"},
        "run_cap": n,
        "parameters": {
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
            "trainer.max_epochs": {"value": 1},
        },
        "command": ["${env}", "${interpreter}", str(REPO / "tests" / "fake_train.py"), "${args_no_hyphens}"],
    }
    path = root / "launch.yaml"
    path.write_text(yaml.safe_dump(doc))
    os.environ["FAKE_TRAIN_EPOCH_S"] = "0"
    os.chdir(root)
    sweep = LocalSweep.create(path, sweeps_root=root / "sweeps")
    t0 = time.perf_counter()
    result = run_agent(sweep, poll_s=1.0, out=lambda s: None)
    agent_s = time.perf_counter() - t0
    assert all(o.state == "finished" for o in result.outcomes.values()), result
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, str(REPO / "tests" / "fake_train.py"), "trainer.max_epochs=1"], check=True)
    direct_s = time.perf_counter() - t0
    print(
        f"run launch: agent {agent_s / n * 1e3:.0f} ms per run vs the command alone {direct_s / n * 1e3:.0f} ms "
        f"-> engine + agent overhead {(agent_s - direct_s) / n * 1e3:.0f} ms per run ({n} runs)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--launches", type=int, default=10)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_suggest(Path(tmp), args.trials)
        bench_launch(Path(tmp), args.launches)


if __name__ == "__main__":
    main()
