"""The throughput benchmarks still run after the code under them changes: on the CPU, at
toy sizes (their numbers mean nothing here; the README's come from full runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _util import REPO


def _bench(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.model
def test_gpu_train_benchmark_runs_on_cpu_with_a_tiny_backbone():
    out = _bench("gpu_train.py", "--preset", "hrnet_w18_small_cpu", "--size", "64", "--batches", "2",
                 "--precisions", "32", "--compile", "off", "--warmup", "1", "--steps", "1")
    rows = [line for line in out.splitlines() if line.startswith("| 2 | 32 |")]
    # channels_last off and on, each a measured row, not an error
    assert len(rows) == 2 and all("error" not in r and "OOM" not in r for r in rows), out


@pytest.mark.model
def test_data_pipeline_benchmark_runs_every_stage():
    out = _bench("bench_data.py", "--images", "2", "--size", "256", "--json")
    for stage in ("decode", "augment", "targets", "collate"):
        assert stage in out
    assert "images/s per core" in out
