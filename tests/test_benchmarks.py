"""The throughput benchmarks still run after the code under them changes: on the CPU, at
toy sizes (their numbers mean nothing here; the README's come from full runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _util import REPO


def _bench(script: str, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


ONE_THREAD = {"OMP_NUM_THREADS": "1"}
"""Beside other work on a small machine, OpenMP's spinning threads make a step 100x slower."""


@pytest.mark.model
def test_gpu_train_benchmark_runs_on_cpu_with_a_tiny_backbone():
    out = _bench(
        "gpu_train.py",
        "--preset",
        "hrnet_w18_small_cpu",
        "--size",
        "64",
        "--batches",
        "2",
        "--precisions",
        "32",
        "--compile",
        "off",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--find-batch",
        env=ONE_THREAD,
    )
    rows = [line for line in out.splitlines() if line.startswith(("| seed setup |", "| grid |"))]
    # the seed's setup first, then channels_last off and on: each a measured row, not an error
    assert rows[0].startswith("| seed setup | 2 | 32 | False | off | off |") and len(rows) == 3, out
    assert all("error" not in r and "OOM" not in r for r in rows), out
    ratios = [r.split("|")[8].strip() for r in rows]
    assert ratios[0] == "1.00x" and all(x.endswith("x") for x in ratios), out
    assert "training FLOPs per image" in out and "--find-batch: no CUDA GPU" in out


@pytest.mark.integration
def test_gpu_train_end_to_end_trains_through_the_data_loader_on_cpu():
    out = _bench(
        "gpu_train.py",
        "--preset",
        "hrnet_w18_small_cpu",
        "--size",
        "128",
        "--batches",
        "2",
        "--precisions",
        "32",
        "--channels-last",
        "off",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--e2e",
        "--images",
        "8",
        env=ONE_THREAD,
    )
    header = next(i for i, line in enumerate(out.splitlines()) if "training images/s" in line)
    row = out.splitlines()[header + 2].strip("|").split("|")
    train_ips, val_ips, wait = float(row[4]), float(row[5]), float(row[6].strip().rstrip("%"))
    assert train_ips > 0 and val_ips > 0 and 0 <= wait < 100, out
    assert "epoch 2 of 2" in out


@pytest.mark.model
def test_data_pipeline_benchmark_runs_every_stage():
    out = _bench("bench_data.py", "--images", "2", "--size", "256", "--json")
    for stage in ("decode", "augment", "targets", "collate"):
        assert stage in out
    assert "images/s per core" in out
