"""The post-processing search at validation, bounded and fault-tolerant (issue 20): a time
budget per validation epoch that keeps the best setting scored when it cuts the search;
a search worker that is killed (SIGKILL) or stops answering (SIGSTOP) is noticed, the
search goes on in the training process; `tune-postprocess`'s scoring survives a killed
worker too. Real processes, real signals. (A training whose worker is killed:
`test_validation.py`.)"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_tune import constructed_map

from _util import pid_alive
from hrnet_sweep.config import PostprocessConfig
from hrnet_sweep.dbnet.validation import MIN_BUDGET_S, Setting, ValidationSearch, score_settings

PP = PostprocessConfig(thresh=0.3, box_thresh=0.4, unclip_ratio=1.5, use_polygon=True, min_size=3)


def speckled(seed: int, tiles: int = 1) -> tuple:
    """A validation item whose map is full of speckle (2 % of the pixels at 0.25-0.65, as
    a model leaving its plateau gives): the preset's thresholds keep it, thresh 0.5 and
    box_thresh 0.7 drop it. `tiles` repeats the map (and its words) `tiles` x `tiles`."""
    prob, gts = constructed_map(seed)
    rng = np.random.default_rng(100 + seed)
    dots = rng.random(prob.shape) < 0.02
    prob = np.maximum(prob, dots * rng.uniform(0.25, 0.65, prob.shape).astype(np.float32))
    h, w = prob.shape
    prob = np.tile(prob, (tiles, tiles))
    gts = [g + np.float32([x * w, y * h]) for y in range(tiles) for x in range(tiles) for g in gts]
    return np.rint(prob * 255).astype(np.uint8), prob.shape, gts


def _search(items: list[tuple], workers: int = 0, **finish) -> tuple:
    search = ValidationSearch(PP, workers=workers)
    try:
        search.begin_epoch()
        for i in range(0, len(items), 2):  # batches of two, as validation hands them over
            search.add(items[i : i + 2])
        return search.finish(**finish), dict(search.stats)
    finally:
        search.close()


def _rows(table: list[dict]) -> dict:
    return {Setting.of(r): (r["precision"], r["recall"], r["hmean"]) for r in table}


def _same(table: list[dict], expected: list[dict]) -> bool:
    """The same settings in the same order with the same scores (up to the order of the sums)."""
    return [Setting.of(r) for r in table] == [Setting.of(r) for r in expected] and [
        r["hmean"] for r in table
    ] == pytest.approx([r["hmean"] for r in expected], abs=1e-12)


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.02)


# ----------------------------------------------------------------------------- the budget


@pytest.mark.unit
def test_budget_cuts_a_speckled_search_logs_it_and_keeps_the_best_scored(caplog):
    items = [speckled(i) for i in range(4)]
    full, full_stats = _search(items)
    assert full.cut is None and full_stats["search_cut"] == 0.0
    assert full.best["hmean"] > full.fixed["hmean"] + 0.2  # the speckle hurts the preset's setting
    assert {r["stage"] for r in full.table} == {"coarse", "refine"}

    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.validation"):
        cut, stats = _search(items, budget_s=0.0)
    assert stats["search_cut"] == 1.0 and cut.cut is not None
    assert "post-processing search cut at its budget of 0.0 s: 1 of 37 coarse settings scored on all 4 images" in (
        cut.cut
    )
    assert cut.cut in caplog.text
    # what was scored before the cut: the fixed setting (always), exactly as the full search scored it
    assert _rows(cut.table) == {Setting.of(PP): _rows(full.table)[Setting.of(PP)]}
    assert cut.best == cut.fixed == full.fixed

    # the budget as training gives it: a fraction of the epoch's training seconds, at least MIN_BUDGET_S
    search = ValidationSearch(PP.model_copy(update={"tune_budget": 0.25}), workers=0)
    assert search.budget_s(60.0) == 15.0 and search.budget_s(1.0) == MIN_BUDGET_S
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.validation"):
        search.begin_epoch()
        search.add(items)
        search.finish(train_s=0.0, budget_s=0.0)
    assert "(models.postprocess.tune_budget=0.25 of a 0.0 s training epoch, at least 2 s)" in caplog.text


@pytest.mark.unit
def test_a_search_inside_its_budget_is_the_full_search():
    items = [speckled(i) for i in range(4)]
    full, _ = _search(items)
    within, stats = _search(items, budget_s=60.0)
    assert within.cut is None and stats["search_cut"] == 0.0
    assert within.table == full.table and within.best == full.best


# ----------------------------------------------------------------------------- a dying or stuck worker


@pytest.mark.unit
@pytest.mark.parametrize("when", ["before the first batch", "between batches"])
def test_a_killed_search_worker_is_replaced_by_the_training_process(caplog, when):
    items = [speckled(i) for i in range(4)]
    serial, _ = _search(items)
    search = ValidationSearch(PP, workers=1)
    try:
        search.start()
        (pid,) = search.worker_pids()
        search.begin_epoch()
        with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.validation"):
            if when == "between batches":
                search.add(items[:2])
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
            search.add(items[2:] if when == "between batches" else items[:2])
            if when == "before the first batch":
                search.add(items[2:])
            result = search.finish(budget_s=60.0)
        assert "post-processing search worker failed (a worker process died (BrokenProcessPool" in caplog.text
        assert "the search goes on in the training process" in caplog.text
        assert search.workers == 0 and search.worker_pids() == []
        assert result.cut is None and _same(result.table, serial.table)
        search.begin_epoch()  # later epochs search in this process
        search.add(items)
        assert _same(search.finish(budget_s=60.0).table, serial.table)
    finally:
        search.close()


@pytest.mark.unit
def test_a_search_worker_that_stops_answering_is_cut_at_the_budget_and_replaced(caplog):
    items = [speckled(i) for i in range(4)]
    serial, _ = _search(items)
    search = ValidationSearch(PP, workers=1)
    try:
        search.start()
        (pid,) = search.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # alive, never answers
        search.begin_epoch()
        search.add(items[:2])
        search.add(items[2:])
        done: list = []
        with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.validation"):
            waiting = threading.Thread(target=lambda: done.append(search.finish(budget_s=1.0)), daemon=True)
            waiting.start()
            waiting.join(timeout=30)  # a wait without a bound would hang here for ever
        assert done, "finish waited for a worker that does not answer"
        (result,) = done
        assert result.cut is not None and "cut at its budget of 1.0 s" in caplog.text
        assert result.best == result.fixed == serial.fixed  # scored here
        _wait_gone(pid)  # the stuck worker is killed...
        (fresh,) = search.worker_pids()  # ... and replaced
        assert fresh != pid and search.workers == 1
        search.begin_epoch()
        search.add(items)
        assert _same(search.finish(budget_s=60.0).table, serial.table)
    finally:
        search.close()


def _spawned_workers() -> list[int]:
    """This process's children started by multiprocessing's spawn (pool workers)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmd:
            found.append(int(d.name))
    return found


@pytest.mark.unit
def test_tune_postprocess_scoring_survives_a_killed_worker(caplog):
    items = [speckled(i) for i in range(4)]
    settings = [Setting(t, b, 1.5, True) for t in (0.3, 0.5) for b in (0.4, 0.7)]
    serial = score_settings(items, settings, workers=1)
    killed: list[int] = []
    before = set(_spawned_workers())  # a pool of an earlier test, still exiting

    def kill_one() -> None:  # as soon as a worker exists, whatever it is doing
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in [p for p in _spawned_workers() if p not in before][:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.validation"):
        pooled = score_settings(items, settings, workers=2)
    killer.join()
    assert killed, "no worker was started"
    assert "post-processing search worker failed (a worker process died" in caplog.text
    assert _same(pooled, serial)


# ----------------------------------------------------------------------------- DataLoader workers

_DATALOADER = """
import os, signal, sys, time
import torch
from hrnet_sweep.children import helper_failure

class Slow:
    def __len__(self):
        return 64
    def __getitem__(self, i):
        time.sleep(0.2)
        return i

batches = iter(torch.utils.data.DataLoader(Slow(), batch_size=2, num_workers=1, timeout=2))
next(batches)
worker = batches._workers[0].pid
os.kill(worker, int(sys.argv[1]))
try:
    for _ in batches:
        pass
except RuntimeError as err:
    print(helper_failure(err), flush=True)
    if sys.argv[1] != str(int(signal.SIGKILL)):  # a stopped worker would hold our stdout open
        os.kill(worker, signal.SIGKILL)
    os._exit(0)  # torch's SIGCHLD handler would raise again in any clean-up
"""


@pytest.mark.model
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_helper_failure_names_a_dataloader_worker_that_dies_or_stops_answering(sig):
    # What `pipeline.train` needs to end a run on one line instead of a traceback; in a
    # child process, as torch's SIGCHLD handler stays armed in the process it ran in.
    import subprocess
    import sys

    from hrnet_sweep.children import helper_failure

    proc = subprocess.run(
        [sys.executable, "-c", _DATALOADER, str(int(sig))], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    if sig == signal.SIGKILL:
        assert line.startswith("a DataLoader worker died (RuntimeError: DataLoader worker (pid"), line
        assert "data.num_workers=0" in line
    else:
        assert line == "a DataLoader worker did not answer (RuntimeError: DataLoader timed out after 2 seconds)"
    assert helper_failure(ValueError("x")) is None and helper_failure(RuntimeError("CUDA error")) is None
