"""Hyperband stopping pinned to W&B's rule (wandb/sweeps `hyperband_stop_runs`).

The band is the N-th logged value (1-based), thresholds come from all runs of any state
that reached the band, the cut is sorted(values)[int(n / eta)] with lower-is-better
orientation, ties survive, strict compares the value at the band and non-strict the
best value so far.
"""

from __future__ import annotations

import math

import pytest

from hrnet_sweep.sweep.hyperband import (
    RunRecord,
    band_thresholds,
    explain_bands,
    hyperband_stop,
    runs_to_stop,
    valid_history,
)
from hrnet_sweep.sweep.spec import HyperbandSpec

pytestmark = pytest.mark.unit


def _neg(runs):
    return [RunRecord(r.run_id, r.state, [-x for x in r.history]) for r in runs]


# ----------------------------------------------------------------------------- bands


@pytest.mark.parametrize(
    "spec, expected",
    [
        (HyperbandSpec(min_iter=3, eta=3), [3, 9, 27]),
        (HyperbandSpec(min_iter=5, eta=3), [5, 15, 45]),
        (HyperbandSpec(max_iter=81, s=3, eta=3), [3, 9, 27]),
        (HyperbandSpec(max_iter=18, s=2, eta=3), [2, 6]),
        (HyperbandSpec(max_iter=5, s=2, eta=2), [1, 2]),
        (HyperbandSpec(max_iter=9, s=5, eta=3), [1, 3]),  # stops once max_iter/eta^k < 1
        (HyperbandSpec(min_iter=2, eta=2.5), [2, 5, 12, 31]),  # int() of the running product
    ],
)
def test_bands(spec, expected):
    assert spec.bands()[: len(expected)] == expected


def test_min_iter_bands_are_open_ended_and_cut_by_upto():
    spec = HyperbandSpec(min_iter=5, eta=3)
    assert len(spec.bands()) == 100  # as W&B computes them
    assert spec.bands(upto=20) == [5, 15]
    assert spec.bands(upto=4) == []


# ----------------------------------------------------------------------------- decisions


def _five_runs():
    # W&B's own docstring example (loss, minimize), bands [1, 2] for max_iter 5, s 2, eta 2
    return [
        RunRecord("a", "finished", [10, 9]),
        RunRecord("b", "running", [10, 10]),
        RunRecord("c", "running", [10, 8, 8]),
        RunRecord("d", "running", [10, 7, 7]),
        RunRecord("e", "finished", [10, 6, 6]),
    ]


@pytest.mark.parametrize("strict", [True, False])
def test_threshold_is_top_fraction_of_all_runs_at_the_band(strict):
    spec = HyperbandSpec(max_iter=5, s=2, eta=2, strict=strict)
    runs = _five_runs()
    # band 2 (2nd values): 9, 10, 8, 7, 6 -> sorted[int(5 / 2)] = 8 (finished runs count)
    assert band_thresholds(runs, spec, goal="minimize") == [(1, 10.0, 5), (2, 8.0, 5)]
    d = hyperband_stop(runs, spec, goal="minimize")
    assert set(d) == {"b", "c", "d"}  # only running runs are judged
    assert d["b"].stop and d["b"].band == 2 and d["b"].value == 10 and d["b"].threshold == 8
    assert not d["c"].stop  # 8 == threshold: ties survive
    assert not d["d"].stop
    assert runs_to_stop(runs, spec, goal="minimize") == ["b"]
    assert "band 2" in d["b"].reason and "stop" in d["b"].reason


def test_strict_compares_value_at_band_non_strict_best_so_far():
    # bands [1, 3]; band 3 values c 8, d 7, e 6 -> threshold sorted[int(3 / 3)] = 7
    runs = [
        RunRecord("a", "finished", [10, 9]),
        RunRecord("b", "running", [10, 10]),
        RunRecord("c", "running", [10, 8, 8, 3]),  # bad at band 3, best so far 3
        RunRecord("d", "running", [10, 7, 7, 4]),
        RunRecord("e", "running", [10, 6, 6, 6]),
    ]
    strict = HyperbandSpec(max_iter=9, s=2, eta=3, strict=True)
    lenient = HyperbandSpec(max_iter=9, s=2, eta=3, strict=False)
    assert runs_to_stop(runs, strict, goal="minimize") == ["c"]
    assert runs_to_stop(runs, lenient, goal="minimize") == []
    d = hyperband_stop(runs, strict, goal="minimize")["c"]
    assert (d.band, d.value, d.threshold) == (3, 8, 7)
    assert hyperband_stop(runs, lenient, goal="minimize")["c"].value == 3


def test_maximize_mirrors_minimize():
    runs = [
        RunRecord("a", "finished", [10, 9]),
        RunRecord("b", "running", [10, 10]),
        RunRecord("c", "running", [10, 8, 8, 3]),
        RunRecord("d", "running", [10, 7, 7, 4]),
        RunRecord("e", "running", [10, 6, 6, 6]),
    ]
    spec = HyperbandSpec(max_iter=9, s=2, eta=3, strict=True)
    mini = hyperband_stop(runs, spec, goal="minimize")
    maxi = hyperband_stop(_neg(runs), spec, goal="maximize")
    assert {k: v.stop for k, v in mini.items()} == {k: v.stop for k, v in maxi.items()}
    # values are reported in the metric's own orientation
    assert (maxi["c"].value, maxi["c"].threshold) == (-8, -7)


def test_band_is_nth_logged_value_one_based():
    # min_iter 2: the band is the 2nd value. W&B's old 0-based code would wait for a 3rd.
    spec = HyperbandSpec(min_iter=2, eta=3, strict=True)
    runs = [
        RunRecord("a", "running", [0.9, 0.1]),
        RunRecord("b", "finished", [0.9, 0.2]),
        RunRecord("c", "finished", [0.9, 0.3]),
    ]
    d = hyperband_stop(runs, spec, goal="maximize")["a"]
    # 2nd values 0.1, 0.2, 0.3 -> best first [0.3, 0.2, 0.1][int(3 / 3)] = 0.2
    assert d.stop and d.band == 2 and d.value == pytest.approx(0.1) and d.threshold == pytest.approx(0.2)
    # non-strict: best so far (0.9) beats the threshold
    assert not hyperband_stop(runs, HyperbandSpec(min_iter=2, eta=3, strict=False), goal="maximize")["a"].stop


def test_judged_at_last_band_reached():
    spec = HyperbandSpec(min_iter=1, eta=2, strict=True)  # bands 1, 2, 4, 8
    runs = [RunRecord("x", "running", [5, 5, 5, 5, 1]), RunRecord("y", "finished", [5, 5, 5, 9, 9])]
    d = hyperband_stop(runs, spec, goal="maximize")["x"]
    # 5 values: band 4 applies; 4th values 5 and 9 -> sorted (max) [9, 5][int(2 / 2)] = 5 -> tie, keep
    assert d.band == 4 and d.threshold == 5 and not d.stop


def test_lone_run_is_never_stopped():
    for strict in (True, False):
        spec = HyperbandSpec(min_iter=1, eta=3, strict=strict)
        runs = [RunRecord("only", "running", [0.9, 0.5, 0.1, 0.0])]
        d = hyperband_stop(runs, spec, goal="maximize")["only"]
        assert not d.stop and d.band == 3


def test_ties_survive():
    spec = HyperbandSpec(min_iter=1, eta=3, strict=True)
    runs = [RunRecord(str(i), "running", [0.5]) for i in range(9)]
    assert runs_to_stop(runs, spec, goal="maximize") == []


def test_threshold_counts_runs_of_every_state():
    spec = HyperbandSpec(min_iter=1, eta=2, strict=True)
    alone = [RunRecord("r", "running", [0.5])]
    assert runs_to_stop(alone, spec, goal="maximize") == []
    others = [RunRecord("s", "stopped", [0.9]), RunRecord("f", "failed", [0.8]), RunRecord("k", "crashed", [0.7])]
    # 4 values, max: sorted [0.9, 0.8, 0.7, 0.5][int(4 / 2)] = 0.7 -> 0.5 is worse
    assert runs_to_stop(alone + others, spec, goal="maximize") == ["r"]


def test_before_first_band_nothing_happens():
    spec = HyperbandSpec(min_iter=5, eta=3, strict=True)
    runs = [RunRecord("a", "running", [0.1, 0.1]), RunRecord("b", "finished", [0.9] * 20)]
    d = hyperband_stop(runs, spec, goal="maximize")["a"]
    assert not d.stop and d.band is None and d.threshold is None and "first band at 5" in d.reason


def test_invalid_values_are_dropped_before_counting():
    assert valid_history([0.5, math.nan, None, "NaN", True, math.inf, 0.6, 1]) == [0.5, 0.6, 1.0]
    spec = HyperbandSpec(min_iter=2, eta=3, strict=True)
    runs = [RunRecord("a", "running", [0.5, math.nan]), RunRecord("b", "finished", [0.9, 0.9])]
    assert hyperband_stop(runs, spec, goal="maximize")["a"].band is None  # only one valid value


def test_runs_without_history_and_empty_sweep():
    spec = HyperbandSpec(min_iter=1, eta=3)
    assert hyperband_stop([], spec, goal="maximize") == {}
    d = hyperband_stop([RunRecord("a", "running", [])], spec, goal="minimize")
    assert not d["a"].stop and d["a"].band is None


def test_bad_goal():
    with pytest.raises(ValueError, match="goal"):
        hyperband_stop([], HyperbandSpec(min_iter=1), goal="max")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- explain


def test_explain_user_plan():
    infos = explain_bands(HyperbandSpec(min_iter=5, eta=3, strict=True), 20, 5, 27)
    assert [(b.band, b.epoch, b.fires, b.reached, b.kept) for b in infos] == [
        (5, 5, True, 27, 10),  # sorted[int(27 / 3)] keeps indices 0..9
        (15, 15, True, 10, 4),
    ]


def test_explain_validation_interval_and_last_epoch():
    infos = explain_bands(HyperbandSpec(min_iter=5, eta=3), 20, None, 27, check_val_every_n_epoch=2)
    assert [(b.band, b.epoch, b.fires) for b in infos] == [(5, 10, True)]
    last = explain_bands(HyperbandSpec(min_iter=2, eta=3), 6, 4, 6)
    assert [(b.band, b.fires) for b in last] == [(2, True), (6, False)]
    assert "saves nothing" in last[1].note


def test_explain_max_iter_bands_past_the_end():
    infos = explain_bands(HyperbandSpec(max_iter=81, s=3, eta=3), 6, None, 27)
    assert [(b.band, b.fires, b.reached) for b in infos] == [(3, True, 27), (9, False, 0), (27, False, 0)]
    assert "never reached" in infos[1].note
