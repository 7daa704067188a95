"""The sweep replay: the curve file and its checks, the lookup, and that a replayed sweep
runs the engine's own suggestion and Hyperband code (`hrnet_sweep.sweep.replay`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hrnet_sweep.errors import DataError
from hrnet_sweep.ranking import RunRecord, rank_runs
from hrnet_sweep.sweep.curves import Curve, leave_one_out, lookup, read_curves, seed_noise, write_curves
from hrnet_sweep.sweep.hyperband import explain_bands
from hrnet_sweep.sweep.replay import Method, replay
from hrnet_sweep.sweep.spec import HyperbandSpec

REPO = Path(__file__).resolve().parents[1]
SWEEP = yaml.safe_load((REPO / "benchmarks" / "sweeps" / "sroie_curves.yaml").read_text())
LR, WD, ETA, TMAX = (
    "models.optimizer.lr",
    "models.optimizer.weight_decay",
    "models.scheduler.eta_min",
    "models.scheduler.T_max",
)
EPOCHS = 12


def _params(lr, wd=1e-4, eta=1e-5, tmax=20):
    return {LR: lr, WD: wd, ETA: eta, TMAX: tmax}


def _curve(run_id, params, values, *, seed=42, source="random", epoch_s=5.0):
    return Curve(
        run_id,
        source,
        seed,
        params,
        tuple(values),
        tuple(v * 0.9 for v in values),
        tuple([epoch_s + 3.0] + [epoch_s] * (len(values) - 1)),
        1.0,
    )


def _landscape(n=24, seed=0):
    """Curves whose quality peaks at lr 3e-4 and rises over epochs, every run distinct."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n):
        lr = float(np.exp(rng.uniform(math.log(3e-5), math.log(3e-3))))
        top = 0.95 - 0.25 * (math.log10(lr) - math.log10(3e-4)) ** 2 - 0.001 * i
        values = [top * (1 - math.exp(-(k + 1) / 3)) for k in range(EPOCHS)]
        runs.append(_curve(f"r{i:02d}", _params(lr), values))
    return runs


@pytest.fixture
def curve_file(tmp_path):
    path = tmp_path / "curves.json"
    write_curves(path, sweep=SWEEP, epochs=EPOCHS, runs=_landscape(), meta={"metric": "val/hmean"})
    return path


# ----------------------------------------------------------------------------- the file


def test_curve_file_round_trips_and_groups_seeds(tmp_path):
    runs = _landscape(6) + [
        _curve("s1", _landscape(6)[0].params, [0.5] * EPOCHS, seed=1, source="repeat"),
    ]
    path = write_curves(tmp_path / "c.json", sweep=SWEEP, epochs=EPOCHS, runs=runs, meta={"metric": "val/hmean"})
    got = read_curves(path)
    assert [c.run_id for c in got.runs] == [c.run_id for c in runs]
    assert got.runs[2].hmean == pytest.approx(runs[2].hmean, abs=1e-6)
    assert got.runs[2].arrival_s()[:2] == pytest.approx([8.0, 13.0])
    assert len(got.configs) == 6  # the repeat joins its configuration
    assert sorted(len(g) for g in got.configs) == [1, 1, 1, 1, 1, 2]
    assert set(got.space) == {LR, WD, ETA, TMAX}


def _edit(path: Path, fn) -> Path:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="something else"), "not a curve file"),
        (lambda d: d.update(epochs=True), "'epochs' must be a whole number"),
        (lambda d: d["runs"][3].update(hmean=[0.5] * (EPOCHS - 1)), "run r03: 'hmean' must be a list of 12"),
        (lambda d: d["runs"][3]["hmean"].__setitem__(4, float("nan")), "run r03: hmean[4] = nan"),
        (lambda d: d["runs"][3]["hmean_fixed"].__setitem__(0, 1.5), "run r03: hmean_fixed[0] = 1.5"),
        (lambda d: d["runs"][3]["epoch_s"].__setitem__(0, 0), "run r03: epoch_s[0] = 0"),
        (lambda d: d["runs"][3]["hmean"].__setitem__(0, "0.5"), "run r03: hmean[0] = '0.5'"),
        (lambda d: d["runs"][3]["params"].update({LR: 1.0}), "run r03: params['models.optimizer.lr'] = 1.0"),
        (lambda d: d["runs"][3]["params"].update({TMAX: 16}), "is not one of [15, 18, 20, 25]"),
        (lambda d: d["runs"][3]["params"].pop(WD), "run r03: 'params' must name exactly"),
        (lambda d: d["runs"][3].update(source="made up"), "run r03: 'source'"),
        (lambda d: d["runs"].__setitem__(2, [1, 2]), "runs[2] must be a JSON object"),
        (lambda d: d.update(runs=[]), "'runs' must be a non-empty list"),
        (lambda d: d["sweep"].update(method="annealing"), "'sweep' is no valid sweep"),
    ],
)
def test_a_damaged_curve_file_is_refused_naming_the_file_and_the_run(curve_file, edit, message):
    _edit(curve_file, edit)
    with pytest.raises(DataError) as err:
        read_curves(curve_file)
    assert str(curve_file) in str(err.value)
    assert message in str(err.value)


def test_a_curve_file_that_is_no_json_object_is_refused(tmp_path):
    for text in ("[]", "{", "3"):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(DataError, match="c.json"):
            read_curves(tmp_path / "c.json")


# ----------------------------------------------------------------------------- the lookup


def test_lookup_takes_the_nearest_configuration_in_log_space(tmp_path):
    runs = [_curve("low", _params(1e-4), [0.1] * EPOCHS), _curve("high", _params(1e-3), [0.9] * EPOCHS)]
    curves = read_curves(write_curves(tmp_path / "c.json", sweep=SWEEP, epochs=EPOCHS, runs=runs, meta={}))
    # 5e-4 is nearer 1e-4 on a linear scale (4e-4 away, 5e-4 the other way), nearer 1e-3 in log space
    assert lookup(curves, _params(5e-4)).run_id == "high"
    assert lookup(curves, _params(2.5e-4)).run_id == "low"
    # T_max is placed between its smallest and largest value: 25 is far from 15
    runs = [
        _curve("t15", _params(1e-4, tmax=15), [0.1] * EPOCHS),
        _curve("t25", _params(2e-4, tmax=25), [0.9] * EPOCHS),
    ]
    curves = read_curves(write_curves(tmp_path / "d.json", sweep=SWEEP, epochs=EPOCHS, runs=runs, meta={}))
    assert lookup(curves, _params(1e-4, tmax=25)).run_id == "t25"
    with pytest.raises(KeyError, match="T_max"):
        lookup(curves, {LR: 1e-4, WD: 1e-4, ETA: 1e-5})


def test_lookup_draws_one_of_the_seeds_of_a_configuration(tmp_path):
    p = _params(3e-4)
    runs = [_curve(f"s{s}", p, [0.5 + s / 100] * EPOCHS, seed=s, source="repeat") for s in (1, 2, 3)]
    curves = read_curves(write_curves(tmp_path / "c.json", sweep=SWEEP, epochs=EPOCHS, runs=runs, meta={}))
    rng = np.random.default_rng(0)
    assert {lookup(curves, p, rng).run_id for _ in range(50)} == {"s1", "s2", "s3"}
    assert lookup(curves, p).run_id == "s1"  # without an rng: the first
    assert curves.config_value(curves.configs[0]) == pytest.approx(0.52)


def test_seed_noise_and_leave_one_out_error(tmp_path):
    a, b = _params(1e-4), _params(1e-3)
    runs = [
        _curve("a1", a, [0.50] * EPOCHS, seed=1),
        _curve("a2", a, [0.54] * EPOCHS, seed=2),
        _curve("b1", b, [0.80] * EPOCHS, seed=1),
        _curve("b2", b, [0.80] * EPOCHS, seed=2),
    ]
    curves = read_curves(write_curves(tmp_path / "c.json", sweep=SWEEP, epochs=EPOCHS, runs=runs, meta={}))
    noise = seed_noise(curves)
    assert noise["configs"] == 2 and noise["seeds"] == 2
    assert noise["best_mad"] == pytest.approx(0.02)  # (0.04 + 0) / 2
    assert noise["best_sd"] == pytest.approx((0.04 / math.sqrt(2)) / 2)
    loo = leave_one_out(curves)  # each configuration predicted by the other: 0.52 vs 0.80
    assert loo["best_mae"] == pytest.approx(0.28)
    assert loo["epoch_rmse"] == pytest.approx(0.28)


# ----------------------------------------------------------------------------- the replay


def test_a_replayed_sweep_is_recorded_by_the_engine_as_agents_record_it(curve_file):
    curves = read_curves(curve_file)
    result = replay(curves, Method("random", "random"), agents=2, run_cap=6, seed=5, clock="recorded")
    assert len(result.runs) == 6 and {r.agent for r in result.runs} == {0, 1}
    engine = {r.run_id: r for r in result.engine_runs}
    assert set(engine) == {r.run_id for r in result.runs}
    for run in result.runs:
        rec = engine[run.run_id]
        assert rec.state == "finished"
        assert rec.history == list(run.curve.hmean)  # every value reported, in order
        assert rec.best == pytest.approx(run.curve.best)
        assert rec.params[LR] == run.params[LR]
        assert run.curve is lookup(curves, run.params)  # one seed per configuration here
        assert run.end_s - run.start_s == pytest.approx(run.curve.duration_s)
    # each agent runs one run after the other
    for agent in (0, 1):
        mine = [r for r in result.runs if r.agent == agent]
        assert all(b.start_s == pytest.approx(a.end_s) for a, b in zip(mine, mine[1:]))
    # the winner is the one `hrnet_sweep best` ranks first, from the engine's records
    ranked = rank_runs(RunRecord(r.run_id, r.state, history=r.history) for r in result.engine_runs)
    assert result.winner().run_id == ranked.best.run.id
    assert result.compute_s(math.inf) == pytest.approx(sum(r.curve.duration_s for r in result.runs))
    # the same seed gives the same sweep; another seed another one
    again = replay(curves, Method("random", "random"), agents=2, run_cap=6, seed=5, clock="recorded")
    assert [r.params for r in again.runs] == [r.params for r in result.runs]
    other = replay(curves, Method("random", "random"), agents=2, run_cap=6, seed=6, clock="recorded")
    assert [r.params for r in other.runs] != [r.params for r in result.runs]


@pytest.mark.parametrize("min_iter, eta", [(2, 3), (4, 2)])
def test_replay_stops_runs_where_explain_says_hyperband_judges_them(curve_file, min_iter, eta):
    curves = read_curves(curve_file)
    early = {"type": "hyperband", "min_iter": min_iter, "eta": eta, "strict": True}
    result = replay(curves, Method("hb", "random", early), agents=1, run_cap=12, seed=3)
    judged = {b.band for b in explain_bands(HyperbandSpec(min_iter=min_iter, eta=eta), EPOCHS, None) if b.fires}
    stopped = [r for r in result.runs if r.state == "stopped"]
    assert stopped, "a landscape of distinct curves must make Hyperband stop some runs"
    for run in stopped:
        assert run.stop["band"] in judged  # the engine's recorded decision, at a band explain lists
        assert run.epochs == run.stop["band"] + 1  # training sees STOP after its next validation
        assert run.stop["value"] == pytest.approx(run.history[run.stop["band"] - 1])
        assert run.stop["value"] < run.stop["threshold"]
    for run in result.runs:
        if run.state == "finished":
            assert run.epochs == EPOCHS
    # without early_terminate nothing is stopped
    plain = replay(curves, Method("plain", "random"), agents=1, run_cap=12, seed=3)
    assert all(r.state == "finished" for r in plain.runs)
    assert [r.params for r in plain.runs] == [r.params for r in result.runs]  # same suggestions


def test_bands_of_two_settings_differ_as_explain_says(curve_file):
    curves = read_curves(curve_file)
    seen = {}
    for min_iter in (2, 5):
        early = {"type": "hyperband", "min_iter": min_iter, "eta": 3, "strict": True}
        result = replay(curves, Method("hb", "random", early), agents=2, run_cap=16, seed=11)
        seen[min_iter] = {r.stop["band"] for r in result.runs if r.stop}
    assert seen[2] <= {2, 6} and seen[5] <= {5}
    assert seen[2] and seen[5]


def test_sweep_replay_quick_on_the_recorded_curves_prints_the_table(tmp_path):
    """The `--quick` comparison on the curve file in the repository, as the README runs it."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "sweep_replay.py"),
            "--quick",
            "--json",
            str(tmp_path / "replay.json"),
            "--plot",
            str(tmp_path / "regret.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "| random + none |" in out.stdout and "bayes + hb 5/3" in out.stdout
    assert "(shipped) |" in out.stdout and "goal: " in out.stdout
    assert "hours to within 0.005" in out.stdout and "seed noise" in out.stdout
    doc = json.loads((tmp_path / "replay.json").read_text())
    assert len(doc["results"]) == 6 * len({r["method"] for r in doc["results"]})
    assert all(r["agents"] == 4 and r["run_cap"] == 20 for r in doc["results"])
    assert (tmp_path / "regret.png").stat().st_size > 10_000


def test_the_typical_clock_gives_every_run_the_median_epoch_times(tmp_path):
    runs = [
        _curve("fast", _params(1e-4), [0.5] * EPOCHS, epoch_s=5.0),
        _curve("slow", _params(3e-4), [0.6] * EPOCHS, epoch_s=50.0),  # recorded on a busy machine
        _curve("mid", _params(1e-3), [0.7] * EPOCHS, epoch_s=6.0),
    ]
    curves = read_curves(write_curves(tmp_path / "c.json", sweep=SWEEP, epochs=EPOCHS, runs=runs, meta={}))
    assert curves.typical_epoch_s == pytest.approx([9.0] + [6.0] * (EPOCHS - 1))
    typical = replay(curves, Method("random", "random"), agents=1, run_cap=3, seed=0)
    for run in typical.runs:
        assert run.end_s - run.start_s == pytest.approx(9.0 + 6.0 * (EPOCHS - 1) + 1.0)
    recorded = replay(curves, Method("random", "random"), agents=1, run_cap=3, seed=0, clock="recorded")
    assert sorted(r.end_s - r.start_s for r in recorded.runs) != sorted(r.end_s - r.start_s for r in typical.runs)
    with pytest.raises(ValueError, match="clock"):
        replay(curves, Method("random", "random"), agents=1, run_cap=3, seed=0, clock="wall")
