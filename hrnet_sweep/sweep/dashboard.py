"""`hrnet_sweep dashboard SWEEP`: optuna-dashboard, the web UI Optuna users already run,
on a local sweep (a folder's journal, or a sweep in a PostgreSQL database), showing the
sweep the way this package speaks of it.

optuna-dashboard reads an Optuna storage; it gets `SweepView`, a read-only view of the
sweep's own storage (live: every request reads the sweep as it is now), in which

* the study is named after the sweep (`<name> (<id>)`), its metric is `val/hmean` (Optuna's
  metric-name attribute), and the sweep's file and settings are study attributes;
* each trial (run) carries readable attributes: run id, state (`finished`, `stopped`,
  `failed`, `crashed`, `running`), reason, Hyperband decision, best value and epoch,
  checkpoints, run folder, agent and host; and `rank`, the run's place by the rule of
  `hrnet_sweep best`;
* the sweep's fixed parameters (`value:`, e.g. the preset and the canvas) are parameters
  of every trial, beside the searched ones;
* the best trial is the run `hrnet_sweep best` picks (`sweep.winner`): on a tie in
  `val/hmean`, the run that reached it at the earlier epoch, then the smaller run id
  (Optuna alone would take the first trial to finish);
* nothing can be written: a trial marked complete or failed from the UI would corrupt the
  sweep, so every write is refused with a message saying so.

optuna-dashboard is an optional extra (`pip install 'hrnet-sweep[dashboard]'`); without
it the command says how to install it and exits 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
import time
from collections.abc import Container, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from ..numeric import flag
from ..ranking import rank_runs
from ._records import RunInfo
from .engine import LocalSweep, add_sweep_flags, open_sweep
from .winner import run_records

__all__ = [
    "METRIC_NAMES_ATTR",
    "READ_ONLY",
    "SweepView",
    "main",
    "run_attrs",
    "serve",
    "study_attrs",
    "study_name",
]

METRIC_NAMES_ATTR = "study:metric_names"
"""Where Optuna keeps `Study.set_metric_names` (a study system attribute); optuna-dashboard
names the objective from it."""
READ_ONLY = "hrnet_sweep dashboard shows a sweep read-only; change it with hrnet_sweep (sweep, agent, clean)"
INSTALL = "pip install 'hrnet-sweep[dashboard]' (or: pip install optuna-dashboard)"
_HIDDEN_PREFIX = "hrnet_sweep"  # the engine's own study attributes (its metadata in a database)


# ----------------------------------------------------------------------------- what it shows


def study_name(sweep: LocalSweep) -> str:
    """`<sweep name> (<sweep id>)`, or the id alone for a sweep without a name."""
    name = (sweep.spec.name or "").strip()
    return f"{name} ({sweep.sweep_id})" if name else sweep.sweep_id


def _when(ts: Any) -> str | None:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds") if isinstance(ts, (int, float)) else None


def _text(value: Any) -> Any:
    """A value as optuna-dashboard shows it well: numbers and text as they are, the rest as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


def study_attrs(sweep: LocalSweep) -> dict[str, Any]:
    """The sweep's file and settings, as study attributes."""
    spec, meta = sweep.spec, sweep.meta
    et = spec.early_terminate
    attrs = {
        "sweep_id": sweep.sweep_id,
        "name": spec.name,
        "file": meta.get("source"),
        "stored_in": sweep.location,
        "created": _when(meta.get("created_at")),
        "method": spec.method,
        "metric": f"{spec.metric_goal} {spec.metric_name}",
        "run_cap": sweep.run_cap,
        "sampler": meta.get("sampler"),
        "early_terminate": None
        if et is None
        else "hyperband "
        + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in vars(et).items() if v is not None),
        "searched": ", ".join(spec.searched()),
        "fixed": ", ".join(f"{k}={_text(v)}" for k, v in sweep.space.fixed.items()),
        "best_rule": "best val/hmean of a finished run; ties: the earlier epoch, then the smaller run id "
        "(hrnet_sweep best)",
    }
    return {k: _text(v) for k, v in attrs.items() if v not in (None, "")}


def _stop_note(run: RunInfo) -> str | None:
    stop = run.stop or {}
    if stop.get("band") is None:
        return None
    cmp = "<" if (stop.get("value") or 0) < (stop.get("threshold") or 0) else ">="
    return f"band {stop['band']}: {stop.get('value', 0):.4f} {cmp} threshold {stop.get('threshold', 0):.4f}"


def run_attrs(run: RunInfo, rank: int | None, best_epoch: int | None) -> dict[str, Any]:
    """A run's readable attributes (plain values, no JSON to unfold)."""
    out = run.outcome or {}
    attrs = {
        "run_id": run.run_id,
        "state": run.state,
        "rank": rank,
        "best": run.best,
        "best_epoch": best_epoch if best_epoch is not None else out.get("best_epoch"),
        "epochs": run.epochs,
        "reason": run.reason,
        "hyperband": _stop_note(run),
        "best_ckpt": out.get("best_ckpt"),
        "last_ckpt": out.get("last_ckpt"),
        "run_dir": run.run_dir,
        "agent": run.agent.get("agent"),
        "host": run.host,
        "exit_code": run.exit_code,
    }
    return {k: _text(v) for k, v in attrs.items() if v is not None}


# ----------------------------------------------------------------------------- the view


class SweepView(BaseStorage):
    """A read-only Optuna storage showing one local sweep as `hrnet_sweep` speaks of it.

    Every read goes to the sweep's own storage (`LocalSweep.storage`): the view is live.
    """

    def __init__(self, sweep: LocalSweep):
        self.sweep = sweep
        self.base = sweep.storage
        self.study_id = sweep.study_id

    # -- study

    def _check(self, study_id: int) -> None:
        if study_id != self.study_id:
            raise KeyError(f"study_id={study_id} is not this sweep's ({self.study_id})")

    def get_all_studies(self) -> list[FrozenStudy]:
        return [
            FrozenStudy(
                study_name=study_name(self.sweep),
                direction=None,
                directions=self.get_study_directions(self.study_id),
                user_attrs=self.get_study_user_attrs(self.study_id),
                system_attrs=self.get_study_system_attrs(self.study_id),
                study_id=self.study_id,
            )
        ]

    def get_study_id_from_name(self, study_name_: str) -> int:
        if study_name_ in (study_name(self.sweep), self.sweep.sweep_id):
            return self.study_id
        raise KeyError(f"no study named {study_name_!r}")

    def get_study_name_from_id(self, study_id: int) -> str:
        self._check(study_id)
        return study_name(self.sweep)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        self._check(study_id)
        return self.base.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        self._check(study_id)
        own = {k: v for k, v in self.base.get_study_user_attrs(study_id).items() if not k.startswith(_HIDDEN_PREFIX)}
        return {**own, **study_attrs(self.sweep)}

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        self._check(study_id)
        own = self.base.get_study_system_attrs(study_id)
        shown = {k: v for k, v in own.items() if not k.startswith(_HIDDEN_PREFIX)}
        return {**shown, METRIC_NAMES_ATTR: [self.sweep.spec.metric_name or "val/hmean"]}

    # -- trials

    def _runs(self) -> tuple[dict[int, RunInfo], dict[str, tuple[int, int | None]]]:
        """Runs by trial number, and (rank, best epoch) by run id by the rule of `best`."""
        runs = self.sweep.runs()
        ranking = rank_runs(run_records(runs), goal=self.sweep.spec.metric_goal)
        ranks = {r.run.id: (i, r.epoch) for i, r in enumerate(ranking.ranked, 1)}
        return {r.number: r for r in runs}, ranks

    def _show(self, trial: FrozenTrial, runs: Mapping[int, RunInfo], ranks: Mapping[str, tuple]) -> FrozenTrial:
        run = runs.get(trial.number)
        params: dict[str, Any] = dict(trial.params)
        dists: dict[str, BaseDistribution] = dict(trial.distributions)
        for key, value in self.sweep.space.fixed.items():  # the sweep's `value:` parameters
            if key not in params:
                shown = _text(value)
                params[key], dists[key] = shown, CategoricalDistribution((shown,))
        if run is None:
            attrs = {}
        else:
            rank, epoch = ranks.get(run.run_id, (None, None))
            attrs = run_attrs(run, rank, epoch)
        return FrozenTrial(
            number=trial.number,
            state=trial.state,
            value=None,
            values=trial.values,
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
            params=params,
            distributions=dists,
            user_attrs=attrs,
            system_attrs=dict(trial.system_attrs),
            intermediate_values=dict(trial.intermediate_values),
            trial_id=trial._trial_id,
        )

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        self._check(study_id)
        runs, ranks = self._runs()
        trials = self.base.get_all_trials(study_id, deepcopy=False, states=states)
        # the runs `status` lists: a run stopped by the user that goes on shows once, as its continuation
        return [self._show(t, runs, ranks) for t in trials if t.number in runs]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trial = self.base.get_trial(trial_id)
        runs, ranks = self._runs()
        return self._show(trial, runs, ranks)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        self._check(study_id)
        return self.base.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """The run `hrnet_sweep best` picks (ties: the earlier epoch, then the smaller run id)."""
        self._check(study_id)
        runs, ranks = self._runs()
        best = next((rid for rid, (rank, _) in ranks.items() if rank == 1), None)
        number = next((n for n, r in runs.items() if r.run_id == best), None)
        if number is None:
            raise ValueError("no finished run with a finite val/hmean yet")
        trial = self.base.get_trial(self.base.get_trial_id_from_study_id_trial_number(study_id, number))
        return self._show(trial, runs, ranks)

    # -- writes: refused

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise _read_only_error()

    create_new_study = delete_study = set_study_user_attr = set_study_system_attr = _refuse
    create_new_trial = set_trial_param = set_trial_state_values = set_trial_intermediate_value = _refuse
    set_trial_user_attr = set_trial_system_attr = _refuse


def _read_only_error() -> NotImplementedError:
    """The refusal of a write: a `NotImplementedError`, and under optuna-dashboard (bottle)
    an HTTP 403 whose reason its page shows, rather than a 500 it logs with a stack trace."""
    try:
        from bottle import HTTPError
    except ImportError:
        return NotImplementedError(READ_ONLY)

    class ReadOnlyError(HTTPError, NotImplementedError):
        def __str__(self) -> str:
            return READ_ONLY

    return ReadOnlyError(403, READ_ONLY)


# ----------------------------------------------------------------------------- serving


def _dashboard_module():
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(f"optuna-dashboard is not installed: {INSTALL}") from None
    return optuna_dashboard


_CLIENT_GONE = (ConnectionError, TimeoutError)  # a browser tab closed, a client that gave up waiting
STOP_WAIT_S = 5.0
"""Seconds Ctrl-C waits for the request being answered before the server closes anyway."""


def _server_classes():
    """wsgiref's server and request handler, made to behave as a command-line tool's server:
    a connection per thread (the main thread stays free for Ctrl-C, however slow a request
    is), requests answered one at a time (the view reads the sweep as the engine does, from
    one thread), no access log, and a client that goes away is no error."""
    import logging
    import socketserver
    import sys
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    log = logging.getLogger(__name__)

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a request still running at Ctrl-C does not hold the exit
        block_on_close = False

        def handle_error(self, request, client_address) -> None:
            err = sys.exc_info()[1]
            if isinstance(err, _CLIENT_GONE):
                return
            log.warning("dashboard: a request from %s failed: %s: %s", client_address[0], type(err).__name__, err)

    class Handler(WSGIRequestHandler):
        def address_string(self) -> str:  # no reverse DNS lookup per request
            return self.client_address[0]

        def log_message(self, format: str, *args: Any) -> None:  # no access log
            pass

    return Server, Handler


def _one_at_a_time(app, lock: threading.Lock):
    """`app` answering one request at a time (the response read out under the lock too)."""

    def serial(environ, start_response):
        with lock:
            result = app(environ, start_response)
            try:
                return list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()

    return serial


def serve(sweep: LocalSweep, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """optuna-dashboard on `SweepView(sweep)` until interrupted (Ctrl-C, SIGTERM).

    optuna-dashboard's WSGI app (`optuna_dashboard.wsgi`) on wsgiref, as its own
    `run_server` does, but served from a thread: `run_server` answers in the main thread,
    where a Ctrl-C that lands during a request is taken for the request's error (wsgiref
    catches everything there, prints a traceback and serves on)."""
    from wsgiref.simple_server import make_server

    dashboard = _dashboard_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    view = SweepView(sweep)
    server_cls, handler_cls = _server_classes()
    if ":" in host:  # an IPv6 address
        server_cls = type("Server6", (server_cls,), {"address_family": socket.AF_INET6})
    busy = threading.Lock()
    server = make_server(host, port, _one_at_a_time(dashboard.wsgi(view), busy), server_cls, handler_cls)
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    print(
        f"optuna-dashboard on sweep {study_name(sweep)} ({sweep.location}): "
        f"http://{shown}:{server.server_port}/dashboard/studies/{view.study_id}  (read-only; Ctrl-C to stop)",
        flush=True,
    )
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="dashboard", daemon=True)
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    loop.start()
    try:
        while loop.is_alive():
            loop.join(0.5)
    finally:
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(STOP_WAIT_S)
        server.server_close()
        busy.acquire(timeout=STOP_WAIT_S)  # no request left reading the sweep when the caller closes it
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops the dashboard as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep dashboard",
        description="Open optuna-dashboard (a web UI) on a local sweep: its runs, parameters (searched and "
        "fixed), per-epoch val/hmean and the best run as hrnet_sweep best picks it; read-only, live. "
        f"Needs the dashboard extra: {INSTALL}.",
    )
    ap.add_argument("sweep", nargs="?", help="sweep folder or local sweep id (with --storage: the sweep id)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=flag(int, ge=1), default=8080, help="port to listen on (default 8080)")
    add_sweep_flags(ap)
    args = ap.parse_args(list(argv or []))
    if args.port > 65535:
        raise UserError(f"--port {args.port}: a port is at most 65535")
    _dashboard_module()  # before the sweep is opened: say what is missing first
    sweep = open_sweep(args)
    started = time.monotonic()
    try:
        serve(sweep, host=args.host, port=args.port)
    except OSError as err:  # the port is taken, the address is not this machine's
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({err.strerror or err})") from None
    except KeyboardInterrupt:
        print(f"dashboard stopped after {time.monotonic() - started:.0f} s", flush=True)
    finally:
        sweep.close()
    return 0
