"""Embedded sweep engine: W&B distributions -> Optuna, run cap, grid exhaustion, run
records, dead agents -> crashed on resume, two agents starting at the same instant."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hrnet_sweep.errors import DataError, UserError
from hrnet_sweep.sweep._validate import validate_sweep
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome, build_search_space, resolve_sweep_dir

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN = str(REPO / "tests" / "fake_train.py")


def make_sweep_yaml(
    tmp_path: Path, parameters: dict, *, method: str = "random", name: str = "sweep.yaml", **extra
) -> Path:
    doc = {
        "method": method,
        "metric": {"name": "val/hmean", "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", FAKE_TRAIN, "${args_no_hyphens}"],
        **extra,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def spec_of(parameters: dict, method: str = "random"):
    doc = {
        "method": method,
        "metric": {"name": "val/hmean", "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", FAKE_TRAIN, "${args_no_hyphens}"],
    }
    spec, errors = validate_sweep(doc, "test.yaml", check_values=False)
    assert spec is not None, errors
    return spec


# ----------------------------------------------------------------------------- distributions


@pytest.mark.unit
def test_distribution_mapping():
    space = build_search_space(
        spec_of(
            {
                "preset": {"value": "hrnet_w18_small_cpu"},
                "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 2e-4},
                "models.scheduler.T_max": {"values": [15, 18, 20, 25]},
                "data.batch_size": {"distribution": "int_uniform", "min": 1, "max": 8},
                "models.postprocess.thresh": {"distribution": "uniform", "min": 0.2, "max": 0.4},
                "models.optimizer.weight_decay": {"distribution": "log_uniform", "min": -12.0, "max": -8.0},
                "models.postprocess.unclip_ratio": {"distribution": "q_uniform", "min": 1.0, "max": 2.0, "q": 0.25},
            }
        )
    )
    d = space.distributions
    assert d["models.optimizer.lr"] == FloatDistribution(1e-5, 2e-4, log=True)
    assert d["models.scheduler.T_max"] == CategoricalDistribution((15, 18, 20, 25))
    assert d["data.batch_size"] == IntDistribution(1, 8)
    assert d["models.postprocess.thresh"] == FloatDistribution(0.2, 0.4)
    wd = d["models.optimizer.weight_decay"]
    assert wd.log and math.isclose(wd.low, math.exp(-12)) and math.isclose(wd.high, math.exp(-8))
    assert "preset" not in d and space.fixed == {"preset": "hrnet_w18_small_cpu"}
    # q_uniform is sampled continuously and rounded to q, as W&B does
    assert space.decoders["models.postprocess.unclip_ratio"](1.37) == 1.25
    # decode keeps the sweep file's order and adds the fixed values
    params = space.decode(
        {
            "models.optimizer.lr": 1e-4,
            "models.scheduler.T_max": 20,
            "data.batch_size": 2,
            "models.postprocess.thresh": 0.3,
            "models.optimizer.weight_decay": 1e-5,
            "models.postprocess.unclip_ratio": 1.6,
        }
    )
    assert list(params) == list(space.order)
    assert params["preset"] == "hrnet_w18_small_cpu" and params["models.postprocess.unclip_ratio"] == 1.5


@pytest.mark.unit
def test_list_choices_travel_as_json():
    space = build_search_space(spec_of({"models.optimizer.betas": {"values": [[0.9, 0.999], [0.95, 0.999]]}}))
    dist = space.distributions["models.optimizer.betas"]
    assert dist.choices == ("[0.9, 0.999]", "[0.95, 0.999]")
    assert space.decode({"models.optimizer.betas": dist.choices[1]}) == {"models.optimizer.betas": [0.95, 0.999]}


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        {"distribution": "normal", "mu": 0.3, "sigma": 0.05},
        {"values": [0.2, 0.3], "probabilities": [0.5, 0.5]},
    ],
)
def test_unmappable_distribution_is_rejected_by_name(body):
    with pytest.raises(UserError, match="models.postprocess.thresh"):
        build_search_space(spec_of({"models.postprocess.thresh": body}))


@pytest.mark.unit
def test_grid_space_enumerates_int_uniform():
    space = build_search_space(
        spec_of(
            {
                "seed": {"distribution": "int_uniform", "min": 1, "max": 3},
                "models.scheduler.T_max": {"values": [10, 20]},
            },
            method="grid",
        )
    )
    assert space.grid == {"seed": [1, 2, 3], "models.scheduler.T_max": [10, 20]}
    assert len(space.grid_points()) == 6


# ----------------------------------------------------------------------------- run cap, grid, records


def _finish(sweep: LocalSweep, sug, history=(0.1, 0.2), state="finished") -> None:
    sweep.report(sug.number, list(history), 0)
    sweep.finish(
        sug.number,
        RunOutcome(
            state, value=max(history) if state == "finished" else None, exit_code=0 if state == "finished" else 1
        ),
    )


def test_run_cap_is_respected(tmp_path):
    path = make_sweep_yaml(
        tmp_path, {"models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}}, run_cap=3
    )
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    got = [sweep.suggest() for _ in range(3)]
    assert all(s is not None for s in got)
    assert sweep.suggest() is None  # three running runs already count
    for s in got:
        _finish(sweep, s)
    assert sweep.suggest() is None
    assert sweep.exhausted() == "run cap 3 reached"
    # the cap given on the command line wins over the YAML's
    other = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps", run_cap=1)
    assert other.run_cap == 1 and other.suggest() is not None and other.suggest() is None


def test_grid_is_exhausted_and_never_repeats(tmp_path):
    path = make_sweep_yaml(
        tmp_path, {"seed": {"values": [1, 2, 3]}, "models.scheduler.T_max": {"values": [10, 20]}}, method="grid"
    )
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    seen = []
    while (s := sweep.suggest()) is not None:
        seen.append((s.params["seed"], s.params["models.scheduler.T_max"]))
        _finish(sweep, s)
    assert sorted(seen) == sorted((a, b) for a in (1, 2, 3) for b in (10, 20))
    assert sweep.exhausted() == "grid of 6 points done"


def test_grid_point_of_a_crashed_run_runs_again_once(tmp_path):
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}}, method="grid")
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    a, b = sweep.suggest(), sweep.suggest()
    sweep.finish(a.number, RunOutcome("crashed", reason="killed by SIGKILL", exit_code=-9))
    _finish(sweep, b)
    again = sweep.suggest()
    assert again is not None and again.params == a.params
    sweep.finish(again.number, RunOutcome("crashed", reason="killed by SIGKILL", exit_code=-9))
    assert sweep.suggest() is None  # one retry per point, then the grid is done


def test_run_records(tmp_path):
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2, 3]}}, method="grid")
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    a, b, c = sweep.suggest(), sweep.suggest(), sweep.suggest()
    _finish(sweep, a, (0.3, 0.5, 0.4))
    sweep.report(b.number, [0.1, 0.2], 0)
    sweep.record_stop(b.number, {"band": 2, "value": 0.2, "threshold": 0.5, "reason": "hyperband"})
    sweep.finish(b.number, RunOutcome("stopped", value=0.2, exit_code=0, run_dir=str(tmp_path / "out" / b.run_id)))
    sweep.finish(c.number, RunOutcome("failed", reason="loss is NaN", exit_code=1))
    runs = {r.run_id: r for r in LocalSweep.open(sweep.sweep_id, sweeps_root=tmp_path / "sweeps").runs()}
    assert set(runs) == {a.run_id, b.run_id, c.run_id}
    for r in runs.values():
        assert re.fullmatch(r"[a-z0-9]{8}", r.run_id)
        assert r.started_at <= r.ended_at and Path(r.control_dir).is_dir()
        assert r.agent["pid"] == os.getpid()
    ra, rb, rc = runs[a.run_id], runs[b.run_id], runs[c.run_id]
    assert (ra.state, ra.history, ra.best, ra.exit_code) == ("finished", [0.3, 0.5, 0.4], 0.5, 0)
    assert ra.params == a.params and ra.epochs == 3
    assert (rb.state, rb.best, rb.stop["band"], rb.run_dir) == ("stopped", 0.2, 2, str(tmp_path / "out" / b.run_id))
    assert (rc.state, rc.reason, rc.exit_code) == ("failed", "loss is NaN", 1)
    assert sweep.study.trials[b.number].state.name == "PRUNED"
    assert sweep.study.trials[a.number].value == 0.5
    json.dumps([r.to_dict() for r in runs.values()])  # plain data


def test_sweep_folder_layout_and_lookup(tmp_path):
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1]}}, method="grid")
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    assert (sweep.root / "sweep.yaml").read_text() == path.read_text()
    meta = json.loads((sweep.root / "sweep.json").read_text())
    assert meta["sweep_id"] == sweep.sweep_id and meta["method"] == "grid" and meta["sampler"] == "_GridSampler"
    assert resolve_sweep_dir(sweep.sweep_id, tmp_path / "sweeps") == sweep.root
    assert resolve_sweep_dir(sweep.root) == sweep.root
    with pytest.raises(UserError, match="no local sweep"):
        resolve_sweep_dir("nosuchid", tmp_path / "sweeps")
    with pytest.raises(UserError, match="not empty"):
        LocalSweep.create(path, sweep_dir=sweep.root)


# ----------------------------------------------------------------------------- dead agents


def _suggest_and_die(root: str) -> None:
    code = (
        "import sys; from hrnet_sweep.sweep.engine import LocalSweep; "
        f"s = LocalSweep({root!r}).suggest(agent='doomed'); print(s.run_id); sys.stdout.flush()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_resume_marks_runs_of_dead_agents_crashed(tmp_path):
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2, 3]}}, method="grid")
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    alive = sweep.suggest(agent="alive")  # this process: still running
    _suggest_and_die(str(sweep.root))  # an agent that started a run, then its machine stopped
    assert [r.state for r in sweep.runs()] == ["running", "running"]
    resumed = LocalSweep.open(sweep.root)
    reaped = resumed.reap_dead_runs()
    assert len(reaped) == 1 and reaped[0] != alive.run_id
    crashed = next(r for r in resumed.runs() if r.run_id == reaped[0])
    assert crashed.state == "crashed" and "doomed" in crashed.reason
    assert next(r for r in resumed.runs() if r.run_id == alive.run_id).state == "running"
    assert resumed.reap_dead_runs() == []
    # the sweep goes on: the crashed grid point is run again, the grid still completes
    seen = [alive.params["seed"]]
    _finish(resumed, alive)
    while (s := resumed.suggest()) is not None:
        seen.append(s.params["seed"])
        _finish(resumed, s)
    assert sorted(seen) == [1, 2, 3]


def test_remote_agent_counts_as_dead_after_its_heartbeat_goes_stale(tmp_path):
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}}, method="grid")
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    s = sweep.suggest()
    trial_id = sweep._trial_id(s.number)
    run = dict(sweep.study.trials[s.number].user_attrs["run"], host="some-other-node", pid=1)
    sweep.storage.set_trial_user_attr(trial_id, "run", run)
    assert sweep.reap_dead_runs(stale_after_s=60) == []  # fresh heartbeat: alive
    old = time.time() - 120
    os.utime(s.control_dir / "heartbeat", (old, old))
    assert sweep.reap_dead_runs(stale_after_s=60) == [s.run_id]


# ----------------------------------------------------------------------------- concurrency


def _agent_process(root: str, barrier, n: int, queue) -> None:
    try:
        sweep = LocalSweep(root)
        barrier.wait()
        got = []
        for _ in range(n):
            s = sweep.suggest(agent=f"p{os.getpid()}")
            if s is None:
                break
            got.append((s.run_id, s.number, json.dumps(s.params, sort_keys=True)))
        queue.put(("ok", got))
    except BaseException as err:  # report, do not hang the test
        queue.put(("error", repr(err)))


def _run_two_agents(root: Path, n: int) -> list[tuple]:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_agent_process, args=(str(root), barrier, n, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [r for kind, r in results if kind == "error"]
    assert not errors, errors
    return [x for _, got in results for x in got]


@pytest.mark.parametrize("method", ["bayes", "grid"])
def test_two_agents_at_the_same_instant_get_distinct_runs(tmp_path, monkeypatch, method):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    if method == "grid":
        params = {"seed": {"values": [1, 2, 3, 4]}, "models.scheduler.T_max": {"values": [10, 20]}}
        path = make_sweep_yaml(tmp_path, params, method="grid")
    else:
        params = {
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
            "models.scheduler.T_max": {"values": [10, 20]},
        }
        path = make_sweep_yaml(tmp_path, params, method="bayes", run_cap=7)
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    got = _run_two_agents(sweep.root, n=6)
    run_ids, numbers, params_seen = zip(*got)
    assert len(got) == (8 if method == "grid" else 7)  # grid size / run cap, shared by both agents
    assert len(set(run_ids)) == len(got) and len(set(numbers)) == len(got)
    assert len(set(params_seen)) == len(got), "two agents got the same parameters"
    assert len(LocalSweep(sweep.root).runs()) == len(got)


# ----------------------------------------------------------------------------- a damaged sweep folder


def _write_meta(root: Path, **changes) -> None:
    meta = {**json.loads((root / "sweep.json").read_text()), **changes}
    (root / "sweep.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda r: (r / "optuna.journal").unlink(), "optuna.journal is missing"),
        (lambda r: ((r / "optuna.journal").unlink(), (r / "optuna.journal").mkdir()), "optuna.journal is missing"),
        (lambda r: (r / "optuna.journal").write_bytes(b"\x00\xff not json\n"), "holds no study"),  # a cut last line
        (lambda r: (r / "optuna.journal").open("a").write("[1, 2]\n"), "optuna.journal is damaged"),
        (lambda r: (r / "optuna.journal").write_text(""), "holds no study"),
        (lambda r: _write_meta(r, sweep_id="another"), "holds no study 'another'"),
        (lambda r: (r / "sweep.json").write_text("[]"), "sweep.json must be a JSON object, found list"),
        (lambda r: (r / "sweep.json").write_text('{"run_cap": 2}'), "sweep.json has no sweep_id"),
        (lambda r: _write_meta(r, run_cap=True), "run_cap=True must be an integer"),
        (lambda r: _write_meta(r, run_cap=2.5), "run_cap=2.5 must be an integer"),
        (lambda r: (r / "sweep.json").write_text("{"), "malformed JSON"),
    ],
    ids=[
        "journal missing",
        "journal a folder",
        "journal bytes",
        "journal odd line",
        "journal empty",
        "journal of another sweep",
        "meta a list",
        "meta without id",
        "run_cap bool",
        "run_cap fraction",
        "meta not JSON",
    ],
)
def test_opening_a_damaged_sweep_folder_is_a_user_error(tmp_path, damage, needle):
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}}, method="grid")
    root = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps").root
    damage(root)
    with pytest.raises(UserError) as err:
        LocalSweep(root)
    assert needle in str(err.value) and str(root) in str(err.value)
    assert (root / "optuna.journal").exists() or "missing" in needle and not (root / "optuna.journal").exists()


# ----------------------------------------------------------------------------- the folder as a store


def test_a_folder_sweep_names_itself_by_its_folder_and_keeps_its_cap_in_sweep_json(tmp_path):
    """What the launcher and the CLI ask of a sweep, for the default store: the folder is the
    sweep's name, its location and what agents get; it carries no credentials."""
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2, 3]}}, method="grid", run_cap=1)
    sweep = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    assert not sweep.in_database and sweep.location == str(sweep.root) and sweep.ref_args() == [str(sweep.root)]
    assert sweep.agent_args() == (str(sweep.root), [], {}) and sweep.private_env() == ()
    s = sweep.suggest()
    assert sweep.is_here(sweep.runs()[0]) and sweep.suggest() is None
    sweep.set_run_cap(2)  # `sweep --resume --run-cap 2`
    assert json.loads((sweep.root / "sweep.json").read_text())["run_cap"] == 2
    again = sweep.reopen()
    assert again.run_cap == 2 and again.suggest() is not None
    _finish(again, s)
    assert not again.finish(s.number, RunOutcome("finished", value=0.1, exit_code=0))  # closed once
    with pytest.raises(UserError, match="not a database URL"):
        LocalSweep.open("abc", storage="outputs/sweeps")


def test_names_read_back_from_a_sweep_folder_never_lead_outside_it(tmp_path):
    """sweep.json's sweep_id and the run ids become paths: a tampered file cannot send the
    engine's writes elsewhere, and a link planted as engine.lock is not followed."""
    path = make_sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}}, method="grid")
    root = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps").root
    sweep = LocalSweep(root)
    with pytest.raises(DataError, match="run id"):
        sweep.control_dir("../../escaped")
    meta = json.loads((root / "sweep.json").read_text())
    (root / "sweep.json").write_text(json.dumps({**meta, "sweep_id": "../x"}))
    with pytest.raises(UserError, match="must be a plain name"):
        LocalSweep(root)
    (root / "sweep.json").write_text(json.dumps(meta))
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    (root / "engine.lock").unlink(missing_ok=True)
    (root / "engine.lock").symlink_to(target)
    with pytest.raises(DataError, match="engine.lock"):
        LocalSweep(root).suggest()
    assert target.read_text() == "keep"
