"""A sweep in a PostgreSQL database: Optuna's `RDBStorage` plus the few rules the engine
needs on top of it (`storage.SweepStore`; the table in `storage` compares it with a folder).

- The study holds everything the agents must agree on: runs (trials) with their records,
  outcomes and metric values, and, in two study user attributes, the sweep file
  (`hrnet_sweep.sweep_yaml`) and its metadata (`hrnet_sweep.meta`: run cap, heartbeat).
- One suggestion at a time: a session-level advisory lock (`pg_advisory_lock`) keyed by
  the sweep id, held on its own connection, so a killed agent's lock goes with its
  connection.
- Liveness: a running run's agent writes a heartbeat row (Optuna's `trial_heartbeats`,
  `RDBStorage.record_heartbeat`) every `heartbeat_s` from a thread; a run whose last
  beat is older than `grace_s` by the server's clock, counted from the server's own start
  when it restarted since, belongs to a dead agent. Every session runs in UTC, so agents
  in other time zones write comparable beats.
- A lost connection (the server restarts, the network drops) is retried: each engine
  step runs again from its start once the server answers, for up to `RECONNECT_S`; then
  a `UserError` names the server. Connecting at start is not retried: a wrong host or
  password fails at once, exit 2.
- The URL is parsed and shown here only (`DatabaseURL`): messages name the server as
  `postgresql://user@host:port/db`, never with the password; agents started by the
  launcher get the URL without it and the password in `PGPASSWORD`. `PGPASSWORD`,
  `PGPASSFILE` and `~/.pgpass` work as libpq reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError
from .storage import SweepStore, check_meta

__all__ = ["DatabaseStore", "DatabaseURL", "list_sweeps"]

T = TypeVar("T")

META_ATTR = "hrnet_sweep.meta"
YAML_ATTR = "hrnet_sweep.sweep_yaml"
HEARTBEAT_S = 10.0
"""Default seconds between two heartbeats of a running run."""
GRACE_S = 60.0
"""Default age of the last heartbeat past which a run's agent counts as dead."""
RECONNECT_S = 120.0
"""How long a lost connection is retried before the agent gives up."""
CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK = 0x6872_6E65_7473_7700  # advisory lock key while Optuna's tables are created ("hrnets")
SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}


# ----------------------------------------------------------------------------- the URL


class DatabaseURL:
    """A PostgreSQL URL: parsed once, shown without its password."""

    def __init__(self, text: str):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        scheme = text.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise UserError(
                f"--storage: {scheme}:// is not supported; the sweep database is PostgreSQL "
                "(postgresql://user@host[:port]/database)"
            )
        try:
            url = make_url("postgresql+psycopg://" + text.split("://", 1)[1])
            port = url.port
        except (ArgumentError, ValueError):  # the parser's message may quote the URL, password and all
            raise UserError(
                "--storage: not a valid PostgreSQL URL (expected postgresql://user[:password]@host[:port]/database)"
            ) from None
        self.password: str | None = url.password or url.query.get("password")  # libpq takes it in the query too
        self._url = url.difference_update_query(["password"]).set(password=self.password)
        if not url.database:
            raise UserError(f"--storage {self.display}: name the database (postgresql://user@host/DATABASE)")
        self.host = url.host or url.query.get("host") or "localhost"
        self.port = port or 5432
        self.user = url.username

    @property
    def display(self) -> str:
        """The URL without its password: what messages, logs and agents' command lines show."""
        from sqlalchemy.engine import URL

        u = self._url
        bare = URL.create("postgresql", u.username, None, u.host, u.port, u.database, u.query)
        return bare.render_as_string(hide_password=False)

    @property
    def sqlalchemy(self) -> str:
        return self._url.render_as_string(hide_password=False)

    def redact(self, text: str) -> str:
        """`text` with the password (also URL-quoted) replaced by ***."""
        pw = getattr(self, "password", None)
        if not pw:
            return text
        from urllib.parse import quote, quote_plus

        for form in {pw, quote(pw, safe=""), quote_plus(pw)}:
            text = text.replace(form, "***")
        return text

    def problem(self, err: BaseException) -> str:
        """One line saying why talking to the server failed (never the password)."""
        root = _db_error(err) or err
        lines = [ln.strip() for ln in str(root).splitlines() if ln.strip() and not ln.strip().startswith("(")]
        text = lines[0] if lines else type(root).__name__
        if "failed: " in text:  # psycopg: 'connection failed: connection to server at "h", port p failed: REASON'
            text = text.rsplit("failed: ", 1)[1].strip()
        return self.redact(text)

    def cannot_connect(self, err: BaseException) -> str:
        where = f"{self.display} (host {self.host}, port {self.port})"
        return f"cannot connect to the sweep database {where}: {self.problem(err)}"


# ----------------------------------------------------------------------------- errors


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def _db_error(err: BaseException) -> BaseException | None:
    """The driver's own error behind SQLAlchemy's and Optuna's wrappers, if any."""
    for e in _chain(err):
        if type(e).__module__.startswith("psycopg"):
            return e
    return None


def connection_lost(err: BaseException) -> bool:
    """Did this error come from a connection that broke or could not be made?"""
    import psycopg
    import sqlalchemy.exc as sa_exc

    lost = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)
    lost += (psycopg.OperationalError, psycopg.InterfaceError)
    return any(
        isinstance(e, lost) or (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated) for e in _chain(err)
    )


# ----------------------------------------------------------------------------- connecting


def _engine_kwargs() -> dict:
    return {
        "pool_pre_ping": True,  # a connection the server dropped is replaced, not used
        # an agent holds at most a few: its steps, the lock, the heartbeat thread
        "pool_size": 2,
        "max_overflow": 4,
        "connect_args": {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": "-c timezone=UTC",  # heartbeats are written and compared in UTC
            "application_name": "hrnet_sweep",
        },
    }


class _NoSweeps(UserError):
    """The database has no Optuna tables: no sweep was ever created in it."""


def _connect(url: DatabaseURL, *, create: bool) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage on the server; Optuna's tables are made (`create`) under an
    advisory lock, so that two first sweeps on an empty database do not race."""
    try:
        import psycopg
    except ImportError:
        raise UserError(
            "a sweep in a database needs psycopg: pip install 'hrnet-sweep[postgres]' (or 'psycopg[binary]')"
        ) from None
    try:
        with psycopg.connect(
            url.sqlalchemy.replace("postgresql+psycopg://", "postgresql://", 1),
            connect_timeout=CONNECT_TIMEOUT_S,
            autocommit=True,
        ) as conn:
            if create:
                conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            elif conn.execute("SELECT to_regclass('studies') IS NULL").fetchone()[0]:
                raise _NoSweeps(f"the database {url.display} holds no sweeps (no Optuna tables in it)")
            return optuna.storages.RDBStorage(
                url.sqlalchemy, engine_kwargs=_engine_kwargs(), skip_table_creation=not create
            )
    except UserError:
        raise
    except RuntimeError as err:  # Optuna: the tables were made by an incompatible Optuna version
        raise UserError(f"sweep database {url.display}: {url.redact(str(err))}") from None
    except Exception as err:
        if connection_lost(err) or _db_error(err) is not None:
            raise UserError(url.cannot_connect(err)) from None
        raise UserError(f"sweep database {url.display}: {type(err).__name__}: {url.redact(str(err))}") from None


def list_sweeps(text: str) -> list[dict]:
    """Every sweep in the database at URL `text`: its metadata plus `runs`."""
    url = DatabaseURL(text)
    try:
        rdb = _connect(url, create=False)
    except _NoSweeps:
        return []
    try:
        out = []
        for s in rdb.get_all_studies():
            meta = s.user_attrs.get(META_ATTR)
            if isinstance(meta, dict):
                out.append({**meta, "runs": rdb.get_n_trials(rdb.get_study_id_from_name(s.study_name))})
        return out
    finally:
        rdb.engine.dispose()


# ----------------------------------------------------------------------------- the store


class _Heartbeat(threading.Thread):
    """Beats for one run every `interval` seconds until stopped; a failed beat (the server
    is away) is simply tried again at the next one."""

    def __init__(self, beat: Callable[[], None], interval: float):
        super().__init__(daemon=True, name="sweep-heartbeat")
        self._beat, self._interval, self._halt = beat, interval, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            with contextlib.suppress(Exception):
                self._beat()

    def stop(self) -> None:
        self._halt.set()


class DatabaseStore(SweepStore):
    kind = "database"

    def __init__(self, url: DatabaseURL, rdb: optuna.storages.RDBStorage, root: Path, sweep_id: str):
        self.url, self._rdb = url, rdb
        self.root = Path(root).resolve()
        self.sweep_id = sweep_id
        # Optuna's own cache of finished trials (what `optuna.load_study` puts in front of an
        # RDBStorage; exported in `optuna.storages.__all__`): a finished trial is read once.
        self.storage = optuna.storages._CachedStorage(rdb)
        self.reconnect_s = RECONNECT_S
        self._beats: dict[int, _Heartbeat] = {}
        self._depth = threading.local()
        self._key = int.from_bytes(hashlib.blake2b(sweep_id.encode(), digest_size=8).digest(), "big", signed=True)
        try:
            self.study_id = self.storage.get_study_id_from_name(sweep_id)
        except KeyError:
            names = sorted(s.study_name for s in self._rdb.get_all_studies())
            raise UserError(
                f"no sweep {sweep_id!r} in the database {url.display}"
                + (f"; its sweeps: {', '.join(names)}" if names else "; it holds no sweep")
            ) from None
        self._load_meta()  # this machine's folder is made by its first run, not by reading the sweep

    def _load_meta(self) -> None:
        attrs = self.storage.get_study_user_attrs(self.study_id)
        meta, text = attrs.get(META_ATTR), attrs.get(YAML_ATTR)
        where = f"sweep {self.sweep_id} in the database {self.url.display}"
        if not isinstance(meta, dict) or not isinstance(text, str):
            raise UserError(
                f"{where}: its sweep file or metadata is missing (it was not created by hrnet_sweep, "
                "or its creation was cut off)"
            )
        check_meta(meta, f"{where}: metadata")
        self.meta, self._text = meta, text

    @property
    def location(self) -> str:
        return self.url.display

    # -- opening and creating

    @classmethod
    def open(cls, text: str, root: str | os.PathLike, sweep_id: str) -> DatabaseStore:
        url = DatabaseURL(text)
        try:
            rdb = _connect(url, create=False)
        except _NoSweeps:
            raise UserError(f"no sweep {sweep_id!r} in the database {url.display}; it holds no sweep") from None
        try:
            return cls(url, rdb, Path(root), sweep_id)
        except UserError:
            rdb.engine.dispose()
            raise
        except Exception as err:
            rdb.engine.dispose()
            raise UserError(
                url.cannot_connect(err) if connection_lost(err) else f"{url.display}: {url.redact(str(err))}"
            ) from None

    @classmethod
    def create(cls, text: str, root: Path, meta: dict, spec_text: str, direction: str) -> DatabaseStore:
        url = DatabaseURL(text)
        meta = {
            **meta,
            "heartbeat_s": meta.get("heartbeat_s") or HEARTBEAT_S,
            "grace_s": meta.get("grace_s") or GRACE_S,
        }
        rdb = _connect(url, create=True)
        try:
            study_id = rdb.create_new_study([optuna.study.StudyDirection[direction.upper()]], meta["sweep_id"])
            rdb.set_study_user_attr(study_id, YAML_ATTR, spec_text)
            rdb.set_study_user_attr(study_id, META_ATTR, meta)  # last: a sweep with meta is complete
        except optuna.exceptions.DuplicatedStudyError:
            rdb.engine.dispose()
            raise UserError(
                f"a sweep {meta['sweep_id']!r} exists in the database {url.display} already; "
                f"resume it with --resume {meta['sweep_id']}, or choose another id"
            ) from None
        except Exception as err:
            rdb.engine.dispose()
            raise UserError(
                url.cannot_connect(err) if connection_lost(err) else f"{url.display}: {url.redact(str(err))}"
            ) from None
        return cls(url, rdb, root, meta["sweep_id"])

    # -- what the engine asks

    def sweep_doc(self) -> tuple[dict, dict | None, str]:
        import yaml

        return yaml.safe_load(self._text), None, f"sweep {self.sweep_id} in {self.url.display}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        from sqlalchemy import text

        conn = self._rdb.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                conn.close()
            except Exception:  # the connection broke: the lock went with it; never pool it again
                with contextlib.suppress(Exception):
                    conn.invalidate()
                    conn.close()

    def set_run_cap(self, cap: int | None) -> None:
        self.meta = {**self.meta, "run_cap": cap}
        self.storage.set_study_user_attr(self.study_id, META_ATTR, self.meta)

    def run_started(self, trial_id: int, control_dir: Path) -> None:
        self._rdb.record_heartbeat(trial_id)
        beat = _Heartbeat(lambda: self._rdb.record_heartbeat(trial_id), float(self.meta["heartbeat_s"]))
        self._beats[trial_id] = beat
        beat.start()

    def run_ended(self, trial_id: int) -> None:
        beat = self._beats.pop(trial_id, None)
        if beat is not None:
            beat.stop()

    def beat_ages(self, trial_ids: Sequence[int]) -> dict[int, float]:
        """Seconds since each trial's last heartbeat, by the server's clock, counted from
        the server's start if it started later (its downtime is no agent's fault)."""
        from sqlalchemy import text

        if not trial_ids:
            return {}
        with self._rdb.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT trial_id, EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC') - "
                    "GREATEST(heartbeat, pg_postmaster_start_time() AT TIME ZONE 'UTC')) "
                    "FROM trial_heartbeats WHERE trial_id = ANY(:ids)"
                ),
                {"ids": list(trial_ids)},
            ).fetchall()
        return {int(i): float(age) for i, age in rows}

    def dead(self, trials: Sequence[FrozenTrial], stale_after_s: float | None) -> list[FrozenTrial]:
        grace = float(self.meta["grace_s"]) if stale_after_s is None else stale_after_s
        running = {
            self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number): t
            for t in trials
            if t.state == TrialState.RUNNING
        }
        ages = self.beat_ages(list(running))
        # no run record or no beat yet, under the lock: its agent died while starting it
        return [t for i, t in running.items() if not t.user_attrs.get("run") or i not in ages or ages[i] > grace]

    def retrying(self, fn: Callable[[], T]) -> T:
        depth = getattr(self._depth, "n", 0)
        if depth:  # inside a step that is retried as a whole
            return fn()
        self._depth.n = 1
        try:
            return self._retry(fn)
        finally:
            self._depth.n = 0

    def _retry(self, fn: Callable[[], T]) -> T:
        import logging

        deadline, delay = None, 0.5
        while True:
            try:
                return fn()
            except UserError:
                raise
            except Exception as err:
                if not connection_lost(err):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.reconnect_s
                    logging.getLogger("hrnet_sweep.sweep").warning(
                        "sweep database %s: %s; retrying for up to %.0f s",
                        self.url.display,
                        self.url.problem(err),
                        self.reconnect_s,
                    )
                if now >= deadline:
                    raise UserError(
                        f"the sweep database {self.url.display} (host {self.url.host}, port {self.url.port}) did not "
                        f"answer for {self.reconnect_s:.0f} s: {self.url.problem(err)}; stopping (what was recorded "
                        "stays; resume with the same --storage once the server is back)"
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 5.0)

    def is_here(self, run: dict) -> bool:
        return run.get("host") == socket.gethostname()

    def agent_args(self) -> tuple[str, list[str], dict[str, str]]:
        env = {"PGPASSWORD": self.url.password} if self.url.password else {}
        return self.sweep_id, ["--storage", self.url.display, "--sweep-dir", str(self.root)], env

    def ref_args(self) -> list[str]:
        return [self.sweep_id, "--storage", self.url.display]

    def private_env(self) -> tuple[str, ...]:
        return ("PGPASSWORD",)

    def close(self) -> None:
        for trial_id in list(self._beats):
            self.run_ended(trial_id)
        self._rdb.engine.dispose()
