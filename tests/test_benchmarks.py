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


def _summary(rows) -> dict:
    return {"curve": [{"epoch": i, "tuned": t, "hmean": h, "hmean_fixed": f, "epoch_s": 60.0} for i, (t, h, f) in rows]}


def test_plot_curves_draws_train_cpu_summaries(tmp_path):
    import json

    from PIL import Image

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_summary(enumerate([(True, 0.5, 0.4), (True, 0.9, 0.8)]))))
    b.write_text(json.dumps(_summary(enumerate([(True, 0.7, 0.6), (False, 0.85, None), (True, 0.95, 0.9)]))))
    png = tmp_path / "docs" / "curves.png"
    out = _bench(
        "plot_curves.py",
        *("--panel", "val.json", f"512 px={a}", f"768x384={b}"),
        *("--panel", "fold 0", f"768x384={b}"),
        *("--out", str(png), "--target", "0.95"),
    )
    assert f"wrote {png}" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # two panels side by side


def test_plot_curves_names_a_file_that_is_not_a_summary(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": []}')
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "plot_curves.py"), "--panel", "t", f"x={bad}"]
        + ["--out", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.png").exists()


def test_canvas_sizes_of_the_training_benchmarks():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_validation import Canvas, canvas

    assert canvas("512") == Canvas(512, 512) and str(canvas("512")) == "512"
    assert canvas("768x384") == Canvas(768, 384) and str(canvas("768X384")) == "768x384"
    for bad in ("500", "768x", "axb", "0"):
        with pytest.raises(Exception, match="512 or HEIGHTxWIDTH|multiples of 32"):
            canvas(bad)
