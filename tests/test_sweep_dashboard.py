"""`hrnet_sweep dashboard`: optuna-dashboard on a local sweep, read over HTTP from the real
server (its JSON API, what its web page renders), and the view it is given, in-process.

The sweep here is made with the engine's own calls (suggest, report, Hyperband stop,
finish), not by training: two finished runs tie on `val/hmean` (the later trial reached
it at an earlier epoch), one stopped by Hyperband, one failed, one stopped by the user,
one running, one stopped by the user.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from _util import REPO
from hrnet_sweep.errors import UserError
from hrnet_sweep.runfolder import USER_STOP
from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

pytest.importorskip("optuna_dashboard")

SPEC = {
    "name": "tiny_study",
    "method": "random",
    "metric": {"name": "val/hmean", "goal": "maximize"},
    "run_cap": 8,
    "parameters": {
        "preset": {"value": "hrnet_w18_small_cpu"},
        "data.image_height": {"value": 448},
        "models.optimizer.lr": {"distribution": "log_uniform_values", "min": 3e-4, "max": 2e-3},
        "models.scheduler.T_max": {"values": [4, 6]},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3, "strict": True},
    "command": ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"],
}


def _run(sweep: LocalSweep, history: list[float], outcome: RunOutcome | None, stop: dict | None = None):
    s = sweep.suggest(agent="host:1")
    with open(s.control_dir / "metrics.jsonl", "w") as fh:
        for epoch, value in enumerate(history):
            fh.write(json.dumps({"epoch": epoch, "val/hmean": value}) + "\n")
    if history:
        sweep.report(s.number, history, 0)
    if stop:
        sweep.record_stop(s.number, stop)
    if outcome:
        outcome.run_dir = outcome.run_dir or str(s.control_dir)
        sweep.finish(s.number, outcome)
    return s


@pytest.fixture
def sweep(tmp_path) -> LocalSweep:
    path = tmp_path / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    sw = LocalSweep.create(path, sweeps_root=tmp_path / "sweeps")
    ckpt = "/runs/{}/checkpoints/{}.ckpt"
    _run(sw, [0.2, 0.5, 0.9, 0.9], RunOutcome("finished", value=0.9, best_ckpt=ckpt.format("a", "best-02")))
    _run(sw, [0.6, 0.9, 0.8], RunOutcome("finished", value=0.9, best_ckpt=ckpt.format("b", "best-01")))
    _run(
        sw,
        [0.1, 0.2],
        RunOutcome("stopped", value=0.2, reason="hyperband"),
        stop={"band": 2, "value": 0.2, "threshold": 0.5, "reason": "hyperband"},
    )
    _run(sw, [], RunOutcome("failed", reason="loss is nan at epoch 0 step 3"))
    _run(sw, [0.4], None)  # running
    _run(sw, [0.3], RunOutcome("crashed", reason=USER_STOP))  # the next suggestion continues it
    return sw


def _winner_of_best(sweep: LocalSweep) -> str:
    from hrnet_sweep.pipeline.best import load_runs
    from hrnet_sweep.ranking import rank_runs

    return rank_runs(load_runs(str(sweep.root)).runs).best.run.id


# ----------------------------------------------------------------------------- the view


@pytest.mark.unit
def test_the_view_shows_the_sweep_as_hrnet_sweep_speaks_of_it(sweep):
    from hrnet_sweep.sweep.dashboard import METRIC_NAMES_ATTR, SweepView

    view = SweepView(sweep)
    (study,) = view.get_all_studies()
    assert study.study_name == f"tiny_study ({sweep.sweep_id})"
    assert study.system_attrs[METRIC_NAMES_ATTR] == ["val/hmean"]
    attrs = study.user_attrs
    assert attrs["sweep_id"] == sweep.sweep_id and attrs["file"].endswith("tiny_study.yaml")
    assert attrs["method"] == "random" and attrs["metric"] == "maximize val/hmean" and attrs["run_cap"] == 8
    assert "preset=hrnet_w18_small_cpu" in attrs["fixed"] and attrs["early_terminate"].startswith("hyperband")
    trials = view.get_all_trials(sweep.study_id)
    runs = {r.number: r for r in sweep.runs()}
    assert len(trials) == 6
    for t in trials:
        run = runs[t.number]
        # fixed parameters beside the searched ones; attributes as plain values, not JSON
        assert t.params["preset"] == "hrnet_w18_small_cpu" and t.params["data.image_height"] == 448
        assert "models.optimizer.lr" in t.params
        assert t.user_attrs["run_id"] == run.run_id and t.user_attrs["state"] == run.state
        assert all(not isinstance(v, (dict, list)) for v in t.user_attrs.values())
    by_state = {t.user_attrs["state"]: t.user_attrs for t in trials}
    assert by_state["stopped"]["hyperband"] == "band 2: 0.2000 < threshold 0.5000"
    assert by_state["failed"]["reason"].startswith("loss is nan")
    assert by_state["crashed"]["reason"] == USER_STOP
    assert by_state["running"]["epochs"] == 1
    # the best run is `best`'s: on the tie at 0.9 the run that got there at epoch 1, not epoch 2
    best = view.get_best_trial(sweep.study_id)
    assert best.user_attrs["run_id"] == _winner_of_best(sweep) == runs[1].run_id
    assert best.user_attrs["rank"] == 1 and best.user_attrs["best_epoch"] == 1
    assert best.user_attrs["best_ckpt"] == "/runs/b/checkpoints/best-01.ckpt"
    assert sweep.storage.get_best_trial(sweep.study_id).number == 0  # Optuna alone: the first to finish
    # a run stopped by the user that goes on shows once, as its continuation (as `status` shows it)
    stopped = next(t for t in trials if t.user_attrs["state"] == "crashed")
    again = sweep.suggest(agent="host:1")
    assert again.resume and again.run_id == stopped.user_attrs["run_id"]
    shown = {t.number: t.user_attrs for t in view.get_all_trials(sweep.study_id)}
    assert len(shown) == 6 and stopped.number not in shown and shown[again.number]["state"] == "running"
    # read-only: nothing the UI offers can change the sweep
    with pytest.raises(NotImplementedError, match="read-only"):
        view.set_trial_state_values(best._trial_id, state=best.state.FAIL)
    with pytest.raises(NotImplementedError, match="read-only"):
        view.set_study_system_attr(sweep.study_id, "x", 1)


# ----------------------------------------------------------------------------- the real server over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW = 120  # seconds a request may take on a loaded machine (2 cores beside a training)


def _get(url: str, timeout: float = SLOW) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "hrnet_sweep", "dashboard", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_up(proc: subprocess.Popen, base: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            _get(f"{base}/api/studies", timeout=30)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError("optuna-dashboard did not answer")


def _walk_away(port: int, path: str, n: int = 5) -> None:
    """Clients that ask and leave before the answer (a closed tab, a client's timeout)."""
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=SLOW) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.mark.integration
def test_the_real_optuna_dashboard_over_http(sweep, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start([str(sweep.root), "--port", str(port)], tmp_path)
    try:
        _wait_up(proc, base)
        (summary,) = _get(f"{base}/api/studies")["study_summaries"]
        assert summary["study_name"] == f"tiny_study ({sweep.sweep_id})"
        study_id = summary["study_id"]
        detail = _get(f"{base}/api/studies/{study_id}?after=0")
        assert detail["objective_names"] == ["val/hmean"] and detail["directions"] == ["maximize"]
        attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
        assert attrs["sweep_id"] == sweep.sweep_id and attrs["method"] == "random"
        assert {p["name"] for p in detail["union_search_space"]} >= {"preset", "data.image_height"}
        trials = {t["number"]: t for t in detail["trials"]}
        assert len(trials) == 6 and detail["has_intermediate_values"]
        assert [v["value"] for v in trials[0]["intermediate_values"]] == [0.2, 0.5, 0.9, 0.9]
        shown = {a["key"]: a["value"] for a in trials[5]["user_attrs"]}
        assert shown["state"] == "crashed" and shown["reason"] == USER_STOP
        (best,) = detail["best_trials"]
        best_attrs = {a["key"]: a["value"] for a in best["user_attrs"]}
        assert best_attrs["run_id"] == _winner_of_best(sweep) and best["number"] == 1
        # live: a run that finishes meanwhile shows without a restart (the dashboard caches 2 s)
        running = next(r for r in sweep.runs() if r.state == "running")
        sweep.report(running.number, [0.95], 1)
        sweep.finish(running.number, RunOutcome("finished", value=0.95, run_dir=running.control_dir))
        time.sleep(2.5)
        detail = _get(f"{base}/api/studies/{study_id}?after=0")
        assert detail["best_trials"][0]["number"] == running.number
        # read-only: the UI's "mark as failed" is refused, the sweep unchanged
        request = urllib.request.Request(
            f"{base}/api/trials/{trials[2]['trial_id']}/user-attrs",
            data=json.dumps({"user_attrs": {"x": 1}}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=SLOW)
        assert refused.value.code == 403 and "read-only" in json.loads(refused.value.read())["reason"]
        assert "x" not in sweep.runs()[2].outcome
        # the page itself is served (what a browser renders)
        with urllib.request.urlopen(f"{base}/dashboard/studies/{study_id}", timeout=SLOW) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        # clients that leave before their answer: no traceback, and the server goes on
        _walk_away(port, f"/api/studies/{study_id}?after=0")
        assert _get(f"{base}/api/studies")["study_summaries"]
        _walk_away(port, f"/api/studies/{study_id}?after=0")  # still being answered at Ctrl-C
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the server stops at once, requests or not
        stopped = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a server behind, whatever failed
            out, _ = proc.communicate()
            raise AssertionError(f"the dashboard outlived Ctrl-C by {SLOW} s:\n{out}") from None
    assert proc.returncode == 0, out
    assert time.monotonic() - stopped < 60, out
    assert f"http://127.0.0.1:{port}/dashboard/studies/" in out and "read-only" in out and "dashboard stopped" in out
    assert "Traceback" not in out and "Exception" not in out and "Error" not in out, out


@pytest.mark.unit
def test_the_dashboard_names_what_is_missing_or_wrong(sweep, tmp_path, capsys):
    from hrnet_sweep import cli

    code = (  # optuna-dashboard absent, as without the extra
        "import sys; sys.modules['optuna_dashboard'] = None; "
        "from hrnet_sweep.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    missing = subprocess.run(
        [sys.executable, "-c", code, "dashboard", str(sweep.root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert missing.returncode == 2 and "pip install 'hrnet-sweep[dashboard]'" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert cli.main(["dashboard", str(tmp_path / "nowhere")]) == 2
    assert cli.main(["dashboard", str(sweep.root), "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "no local sweep" in err and "--port 70000" in err
    with pytest.raises(UserError):
        from hrnet_sweep.sweep.dashboard import main

        main([])
