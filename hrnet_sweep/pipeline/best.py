"""`hrnet_sweep best`: pick the best finished run of a sweep and export it as a preset.

Three layers, so the rule can be tested without W&B:

- `hrnet_sweep.ranking.rank_runs(runs)`, a pure function over plain `RunRecord`s, ranks
  them (the rule `hrnet_sweep status` shows too).
- Sources turn a sweep into records: `wandb_runs("entity/project/id")` (public API, with
  an HTTP timeout, retries on transient errors and an overall deadline, so it never
  hangs) and `local_runs(dir_or_id)` (the embedded engine's `LocalSweep.runs()`).
- `export_preset` writes the base preset plus the winning parameters as plain numbers,
  with the provenance (`pipeline.presets` owns the file format). Atomic; refuses to
  replace an existing file unless `force`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..constants import METRIC
from ..errors import UserError
from ..files import check_writable
from ..numeric import flag
from ..ranking import RankedRun, Ranking, RunRecord, rank_runs
from ..runfolder import MANIFEST_FILE
from ..wandb_auth import is_sweep_path, require_credentials
from .presets import base_ref, preset_text, write_preset

__all__ = ["SweepRuns", "export_preset", "exported_params", "load_runs", "local_runs", "main", "wandb_runs"]

NOT_EXPORTED = ("preset", "base", "run_name", "output_dir", "resume_from_checkpoint", "wandb", "data.root")
"""Sweep parameters that describe where or how a run ran, not what it learned with."""


# ----------------------------------------------------------------------------- sources


@dataclass
class SweepRuns:
    """A sweep's runs plus what the export needs to know about the sweep."""

    ref: str
    kind: str  # "wandb" | "local"
    runs: list[RunRecord]
    parameters: list[str]
    default_preset: str | None
    metric: str = METRIC
    goal: str = "maximize"
    hosts: dict[str, str] = field(default_factory=dict)
    """Run id -> the machine whose disk holds its files (a sweep in a database)."""


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """A dotted key from a run config: flat (`models.optimizer.lr`, what the sweep sets)
    or nested (`models: {optimizer: {lr}}`, what the logger stores)."""
    if key in config:
        v = config[key]
    else:
        v = config
        for part in key.split("."):
            if not isinstance(v, Mapping) or part not in v:
                return None
            v = v[part]
    if isinstance(v, Mapping) and set(v) <= {"value", "desc"} and "value" in v:
        v = v["value"]  # raw W&B config entries
    return v


def _sweep_parameters(config: Mapping[str, Any]) -> tuple[list[str], str | None]:
    params = config.get("parameters") or {}
    names = [str(k) for k in params]
    preset = params.get("preset") if isinstance(params, Mapping) else None
    default = str(preset["value"]) if isinstance(preset, Mapping) and "value" in preset else None
    return names, default


# -- W&B

TRANSIENT = (TimeoutError, ConnectionError, OSError)


def _transient(err: BaseException) -> bool:
    """Worth retrying: network trouble, timeouts, rate limits, server errors."""
    if isinstance(err, TRANSIENT):
        return True
    name = type(err).__name__
    if name in (
        "CommError",
        "ReadTimeout",
        "ConnectTimeout",
        "ConnectionError",
        "Timeout",
        "HTTPError",
        "ChunkedEncodingError",
        "ServiceUnavailable",
    ):
        return True
    text = str(err).lower()
    # "did not respond in time": wandb's service timeout, raised as AuthenticationError at connect
    return any(
        s in text for s in ("timed out", "timeout", "did not respond", "429", "500", "502", "503", "504", "connection")
    )


def _retry(fn: Callable[[], Any], what: str, *, retries: int, backoff: float, sleep: Callable[[float], None]) -> Any:
    for attempt in range(1, retries + 2):
        try:
            return fn()
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - classified below
            if not _transient(err):
                raise UserError(f"W&B: {what} failed: {type(err).__name__}: {err}") from None
            if attempt > retries:
                raise UserError(
                    f"W&B: {what} failed after {attempt} attempts: {type(err).__name__}: {err}. "
                    "Check the network (or WANDB_BASE_URL) and try again"
                ) from None
            sleep(backoff * 2 ** (attempt - 1))


def _default_api(timeout: float):
    # wandb.Api() prompts for a key when none is configured: fail clearly instead
    require_credentials(
        "reading a W&B sweep (a local sweep is read from its folder: hrnet_sweep best outputs/sweeps/<id>)"
    )
    import wandb

    return wandb.Api(timeout=int(math.ceil(timeout)))


def _wandb_record(run, metric: str) -> RunRecord:
    rows = list(run.scan_history(keys=[metric]))
    if rows and not any("epoch" in r for r in rows):
        by_step = {r.get("_step"): r.get("epoch") for r in run.scan_history(keys=[metric, "epoch"])}
        rows = [{**r, "epoch": by_step.get(r.get("_step"))} for r in rows]
    epochs = [r.get("epoch") for r in rows]
    summary = getattr(run, "summary_metrics", None)
    if summary is None:
        summary = dict(getattr(run, "summary", {}) or {})
    return RunRecord(
        id=str(run.id),
        state=str(run.state),
        config=dict(run.config or {}),
        history=[r.get(metric) for r in rows],
        summary=dict(summary or {}),
        name=getattr(run, "name", None),
        epochs=[int(e) for e in epochs] if all(isinstance(e, (int, float)) for e in epochs) else None,
    )


def wandb_runs(
    path: str,
    *,
    api_factory: Callable[[float], Any] | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 2.0,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SweepRuns:
    """Read a W&B sweep's runs through the public API.

    Args:
        path: `entity/project/sweep_id`.
        api_factory: builds the API object from a timeout (default `wandb.Api(timeout=...)`);
            tests pass a test double here.
        timeout: HTTP timeout per request, seconds.
        retries: extra attempts per call on transient errors (timeouts, connection errors,
            5xx, rate limits), with exponential backoff from `backoff` seconds.
        deadline: seconds for the whole read (default enough for the retries); past it a
            `UserError` is raised even if the client is stuck in its own retry loop.
    """
    factory = api_factory or _default_api
    metric = METRIC
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            kw = dict(retries=retries, backoff=backoff, sleep=sleep)
            api = _retry(lambda: factory(timeout), "connecting", **kw)
            sweep = _retry(lambda: api.sweep(path), f"reading sweep {path}", **kw)
            names, default = _sweep_parameters(
                _retry(lambda: dict(sweep.config or {}), "reading the sweep config", **kw)
            )
            m = (sweep.config or {}).get("metric") or {}
            box["metric"], box["goal"] = m.get("name", metric), m.get("goal", "maximize")
            runs = _retry(lambda: list(sweep.runs), f"listing the runs of {path}", **kw)
            box["result"] = SweepRuns(
                path,
                "wandb",
                [
                    _retry(lambda r=r: _wandb_record(r, metric), f"reading run {getattr(r, 'id', '?')}", **kw)
                    for r in runs
                ],
                names,
                default,
                box["metric"],
                box["goal"],
            )
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    limit = deadline if deadline is not None else (timeout + backoff * 2**retries) * (retries + 1) + 60
    t = threading.Thread(target=work, name="wandb-read", daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        raise UserError(
            f"W&B did not answer within {limit:.0f} s while reading {path}; check the network "
            "(or WANDB_BASE_URL) and try again"
        )
    if "error" in box:
        err = box["error"]
        if isinstance(err, UserError):
            raise err
        raise UserError(f"W&B: reading {path} failed: {type(err).__name__}: {err}") from None
    result: SweepRuns = box["result"]
    if result.metric != METRIC or result.goal != "maximize":
        raise UserError(f"sweep {path} optimises {result.metric} ({result.goal}); `best` ranks by {METRIC} (maximize)")
    return result


# -- embedded engine


def local_runs(
    ref: str | os.PathLike, *, sweeps_root: str | os.PathLike | None = None, storage: str | None = None
) -> SweepRuns:
    """Read a local sweep (folder or id) of the embedded engine; with `storage` (a database
    URL), the sweep of that id in the database."""
    from ..sweep.engine import DEFAULT_SWEEPS_ROOT, LocalSweep
    from ..sweep.winner import run_records

    sweep = LocalSweep.open(ref, sweeps_root=sweeps_root or DEFAULT_SWEEPS_ROOT, storage=storage)
    spec = sweep.spec
    if (spec.metric_name or METRIC) != METRIC or spec.metric_goal != "maximize":
        raise UserError(
            f"sweep {ref} optimises {spec.metric_name} ({spec.metric_goal}); `best` ranks by {METRIC} (maximize)"
        )
    preset = spec.parameters.get("preset")
    runs = sweep.runs()
    records = run_records(runs)  # what the dashboard ranks too: the same winner
    return SweepRuns(
        f"{sweep.sweep_id} in {sweep.location}" if sweep.in_database else str(sweep.root),
        "local",
        records,
        list(spec.parameters),
        str(preset.value) if preset is not None and preset.kind == "value" else None,
        hosts={r.run_id: r.host for r in runs if r.host} if sweep.in_database else {},
    )


def load_runs(ref: str, *, storage: str | None = None, **wandb_kwargs: Any) -> SweepRuns:
    """A local sweep folder or id (in the database at URL `storage`, if given), else
    `entity/project/sweep_id` on W&B."""
    from ..sweep.engine import DEFAULT_SWEEPS_ROOT

    if storage is not None:
        return local_runs(ref, storage=storage)
    p = Path(ref).expanduser()
    if (p / "sweep.json").is_file() or (DEFAULT_SWEEPS_ROOT / ref / "sweep.json").is_file():
        return local_runs(ref)
    if is_sweep_path(ref):
        return wandb_runs(ref, **wandb_kwargs)
    raise UserError(
        f"sweep {ref!r}: not a local sweep folder (holding sweep.json), not a local sweep id under "
        f"{DEFAULT_SWEEPS_ROOT}, and not an entity/project/sweep_id W&B path"
    )


# ----------------------------------------------------------------------------- export


def _plain_number(v: Any) -> Any:
    """NumPy scalars and numeric strings ('3e-4') -> int / float; other values unchanged."""
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict, str)):
        v = v.item()
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if re.fullmatch(r"[+-]?\d+", v.strip()) else f
    if isinstance(v, tuple):
        return [_plain_number(x) for x in v]
    return v


def exported_params(run: RunRecord, parameters: Sequence[str]) -> dict[str, Any]:
    """The run's value of every sweep parameter (except `NOT_EXPORTED` ones), as plain numbers."""
    from ..config import check_key

    out: dict[str, Any] = {}
    for key in parameters:
        if key in NOT_EXPORTED:
            continue
        v = _lookup(run.config, key)
        if v is None:
            raise UserError(f"run {run.id}: its config has no value for sweep parameter {key!r}")
        check_key(key, v, where=f"sweep parameter of run {run.id}: ")
        out[key] = _plain_number(v)
    return out


def _wandb_keys(sweep: SweepRuns) -> dict[str, Any]:
    """A W&B sweep's preset logs to W&B, in the sweep's project: `kfold` then puts its folds
    there, grouped by retrain. A local sweep's logged offline, with no account: its preset
    leaves W&B off (`kfold PRESET wandb=true` turns it on)."""
    if sweep.kind != "wandb":
        return {}
    parts = sweep.ref.split("/")
    where = {"logging.project": parts[1], "logging.entity": parts[0]} if len(parts) == 3 else {}
    return {"wandb": True, **where}


def export_preset(
    out: str | os.PathLike, sweep: SweepRuns, winner: RankedRun, *, force: bool = False, now: datetime | None = None
) -> Path:
    """Write the winning run as a preset that `hrnet_sweep train preset=OUT` accepts.

    The file is validated (loaded through the config) before it replaces anything.
    """
    from ..config import load_config

    run = winner.run
    base = _lookup(run.config, "preset") or sweep.default_preset
    if base is None:
        from ..config import DEFAULT_PRESET

        base = DEFAULT_PRESET
    base = base_ref(str(base))
    params = {**exported_params(run, sweep.parameters), **_wandb_keys(sweep)}
    cfg = load_config({"preset": base, **params})
    provenance = {
        "sweep": sweep.ref,
        "source": sweep.kind,
        "run": run.id,
        "run_name": run.name or run.id,
        "metric": METRIC,
        "best": round(winner.best, 6),
        "epoch": winner.epoch,
        "last": None if winner.last is None else round(winner.last, 6),
        "date": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "folds": {
            "train_json": cfg.data.train_json,
            "fold": cfg.data.fold,
            "num_folds": cfg.data.num_folds,
            "fold_seed": cfg.data.fold_seed,
        },
    }
    if run.run_dir:
        provenance["run_dir"] = str(run.run_dir)
        if run.id in sweep.hosts:
            provenance["run_host"] = sweep.hosts[run.id]
        manifest = Path(run.run_dir) / MANIFEST_FILE
        if manifest.is_file():
            provenance["folds"]["manifest"] = str(manifest.resolve())
    return write_preset(out, preset_text(base, params, provenance), force=force, derives_from=[base])


# ----------------------------------------------------------------------------- CLI


def _short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(sweep: SweepRuns, ranking: Ranking, top: int, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    fixed = {k for k in sweep.parameters if len({repr(_lookup(r.run.config, k)) for r in ranking.ranked}) <= 1}
    keys = [k for k in sweep.parameters if k not in fixed and k not in ("run_name", "output_dir")]
    table = Table(
        title=f"{sweep.ref}: top {min(top, len(ranking.ranked))} of {len(ranking.ranked)} finished runs "
        f"by best {METRIC}"
    )
    for col in ("#", "run", f"best {METRIC}", "epoch", "last", *map(_short_key, keys)):
        table.add_column(col, justify="right" if col not in ("run",) else "left")
    for i, r in enumerate(ranking.ranked[:top], 1):
        table.add_row(
            str(i),
            r.run.name or r.run.id,
            f"{r.best:.4f}",
            "-" if r.epoch is None else str(r.epoch),
            "-" if r.last is None else f"{r.last:.4f}",
            *(_fmt(_lookup(r.run.config, k)) for k in keys),
        )
    console.print(table)
    counts = ranking.counts()
    if counts:
        console.print("excluded: " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep best",
        description=(
            "Rank the finished runs of a sweep by their best logged val/hmean and optionally export the winner "
            "as a preset."
        ),
    )
    ap.add_argument("sweep", help="entity/project/sweep_id (W&B), or a local sweep folder or id")
    ap.add_argument("--export", metavar="PRESET.yaml", help="write the best run as a preset")
    ap.add_argument("--top", type=flag(int, ge=1), default=10, help="rows of the table (default 10)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --export file")
    ap.add_argument("--timeout", type=flag(float, gt=0), default=30.0, help="W&B HTTP timeout per request, seconds")
    ap.add_argument("--retries", type=flag(int, ge=0), default=3, help="W&B retries on transient errors")
    ap.add_argument(
        "--storage", metavar="URL", help="the database of a local sweep across machines (SWEEP is then its id)"
    )
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.export is not None:  # before the sweep is read: a bad path fails in a second, not after W&B
        check_export_path(args.export, force=args.force)
    sweep = load_runs(args.sweep, storage=args.storage, timeout=args.timeout, retries=args.retries)
    ranking = rank_runs(sweep.runs)
    print_table(sweep, ranking, args.top)
    if ranking.best is None:
        raise UserError(f"sweep {args.sweep}: no finished run with a finite {METRIC} among {len(sweep.runs)} runs")
    w = ranking.best
    print(f"best: run {w.run.name or w.run.id}, {METRIC} {w.best:.4f} at epoch {w.epoch}")
    if w.run.id in sweep.hosts and w.run.run_dir:
        print(f"  its files: {sweep.hosts[w.run.id]}:{w.run.run_dir}")
    if args.export is not None:
        path = export_preset(args.export, sweep, w, force=args.force)
        print(f"exported {path}")
        for line in next_commands(path, w.run):
            print(f"  {line}")
    return 0


def check_export_path(path: str | os.PathLike, *, force: bool) -> None:
    """`files.check_writable` for `--export`, leaving nothing behind: the folders it makes
    to probe a missing parent are removed again (the export makes them when it writes)."""
    target = Path(path).expanduser()
    missing = []
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)  # deepest first
        folder = folder.parent
    try:
        check_writable(path, what="--export", overwrite=force)
    finally:
        for made in missing:
            try:
                made.rmdir()
            except OSError:
                break


def _run_data_root(run: RunRecord) -> str | None:
    """The data root the run trained on: its W&B config, else its run folder's config.yaml
    (`data.root`, written there as an absolute path)."""
    root = _lookup(run.config, "data.root")
    if root is None and run.run_dir:
        import yaml

        try:
            doc = yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            doc = None
        root = _lookup(doc, "data.root") if isinstance(doc, Mapping) else None
    return str(root) if isinstance(root, str) and root.strip() else None


def next_commands(preset: Path, run: RunRecord) -> list[str]:
    """What to run next with an exported preset, as it works when printed: the preset keeps
    what the run learned with, not where its data was (`data.root` is this machine's), so
    the commands name the run's data root where this machine would look elsewhere, or say
    that a `data.root=DIR` is needed."""
    from ..config import load_config

    cfg = load_config(preset=str(preset))
    here = cfg.data.resolved_root()  # where `train` looks without data.root: $HRNET_SWEEP_DATA, else ./data
    root = _run_data_root(run)
    extra, note = "", ""
    if root and Path(root).expanduser().resolve() != here.resolve():
        extra = f" data.root={shlex.quote(root)}"
        note = f"  (the run's data root; {here} is where train looks without data.root)"
    elif not (here / cfg.data.train_json).is_file():
        extra = " data.root=DIR"
        note = f"  (DIR: the folder of {cfg.data.train_json}; {here / cfg.data.train_json} does not exist)"
    quoted = shlex.quote(str(preset))
    return [
        f"train it: hrnet_sweep train preset={quoted}{extra}{note}",
        f"retrain every fold: hrnet_sweep kfold {quoted} --folds 0-{cfg.data.num_folds - 1}{extra}",
    ]
