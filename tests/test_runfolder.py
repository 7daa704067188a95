"""The run-folder protocol (`hrnet_sweep.runfolder`): one reader and one writer for each
file, and the one "best of a history" rule that every stage uses."""

from __future__ import annotations

import math

import pytest

from hrnet_sweep import runfolder as rf
from hrnet_sweep.ranking import RunRecord, order_runs, rank_runs


@pytest.mark.unit
def test_history_reads_complete_rows_only(tmp_path):
    rf.append_history(tmp_path, {"epoch": 0, "val/hmean": 0.5})
    rf.append_history(tmp_path, {"epoch": 1, "val/hmean": 0.6})
    with open(tmp_path / rf.METRICS_FILE, "a") as fh:
        fh.write('{"epoch": 2, "val/hm')  # a line cut by a kill
    assert [r["epoch"] for r in rf.read_history(tmp_path)] == [0, 1]
    assert rf.history_is_cut(tmp_path)
    rf.rewrite_history(tmp_path, rf.read_history(tmp_path))
    assert not rf.history_is_cut(tmp_path) and len(rf.read_history(tmp_path)) == 2
    assert rf.read_history(tmp_path / "none") == []


@pytest.mark.unit
def test_tail_returns_each_row_once_and_waits_for_the_end_of_a_line(tmp_path):
    tail = rf.HistoryTail(tmp_path)
    assert tail.read() == []
    rf.append_history(tmp_path, {"epoch": 0, "val/hmean": 0.5})
    with open(tmp_path / rf.METRICS_FILE, "a") as fh:
        fh.write('{"epoch": 1, "val/hmean": 0.')
    assert [r["epoch"] for r in tail.read()] == [0]
    with open(tmp_path / rf.METRICS_FILE, "a") as fh:
        fh.write("7}\n")
    assert [r["val/hmean"] for r in tail.read()] == [0.7] and tail.read() == []
    assert rf.HistoryTail(tmp_path, skip_existing=True).read() == []


@pytest.mark.unit
def test_best_of_a_history_ties_to_the_earlier_epoch():
    assert rf.best_in_history([0.5, 0.9, 0.9, 0.7]) == (1, 0.9)
    assert rf.best_in_history([0.5, 0.2, 0.2], goal="minimize") == (1, 0.2)
    assert rf.best_in_history([math.nan, None, True, "0.99", math.inf, 0.3]) == (5, 0.3)
    assert rf.best_in_history([math.nan, None]) is None
    rows = [{"epoch": 3, "val/hmean": 0.8}, {"epoch": 4}, {"epoch": 5, "val/hmean": 0.8}]
    assert rf.best_row(rows, "val/hmean")["epoch"] == 3
    assert rf.metric_values(rows, "val/hmean") == [0.8, 0.8]


@pytest.mark.unit
def test_status_and_stop_round_trip(tmp_path):
    assert rf.read_status(tmp_path) is None
    rf.write_status(tmp_path, {"state": "finished", "best": 0.9})
    assert rf.read_status(tmp_path)["state"] == "finished"
    (tmp_path / rf.STATUS_FILE).write_text("[1, 2]")  # foreign content reads as no status
    assert rf.read_status(tmp_path) is None
    rf.clear_status(tmp_path)
    assert not (tmp_path / rf.STATUS_FILE).exists()
    assert not rf.stop_requested(tmp_path) and not rf.stop_requested(None)
    rf.request_stop(tmp_path, {"reason": "hyperband"})
    assert rf.stop_requested(tmp_path)


class _Info:  # the engine's RunInfo, as far as ordering reads it
    def __init__(self, run_id, state, history):
        self.run_id, self.state, self.history = run_id, state, history
        found = rf.best_in_history(history)
        self.best = None if found is None else found[1]


@pytest.mark.unit
def test_status_order_and_best_agree_on_ties():
    runs = [
        _Info("b", "finished", [0.2, 0.9]),
        _Info("a", "finished", [0.2, 0.3, 0.9]),
        _Info("c", "finished", [0.9]),
        _Info("d", "stopped", [0.95]),
        _Info("e", "running", [math.nan]),
    ]
    ordered = [r.run_id for r in order_runs(runs)]
    assert ordered == ["d", "c", "b", "a"]  # every state with a value; ties: earlier epoch, then id
    best = rank_runs([RunRecord(r.run_id, r.state, history=r.history) for r in runs]).best
    assert best.run.id == "c" == [i for i in ordered if next(r for r in runs if r.run_id == i).state == "finished"][0]
