"""`hrnet_sweep kfold PRESET --folds 0-4`: retrain every fold with the same parameters.

One fold is one training process, launched exactly as a sweep agent launches a run:

    python -m hrnet_sweep.train preset=PRESET [extra ...] data.fold=K output_dir=PARENT
        run_name=RETRAIN/foldK resume_from_checkpoint=auto logging.group=RETRAIN

so fold K lives in `PARENT/RETRAIN/foldK/` (default `outputs/<preset>-kfold/foldK/`).
Folds run in parallel, one per GPU (pinned with `CUDA_VISIBLE_DEVICES`), queued when
there are more folds than GPUs; on a CPU one at a time, or `--cpu-jobs N` at once with
the cores split between them (one thread each on a 2-core laptop: far faster than two
processes whose thread pools fight). A fold whose `status.json` says
finished is skipped; any other fold is (re)started with `resume_from_checkpoint=auto`,
so an interrupted one continues from its `last.ckpt`. All folds are one W&B group.

The split is checked, not trusted: the retrain writes its own manifest (`folds.json`),
refuses to continue a retrain folder made with another split, compares every fold's
manifest with it, and compares it with the sweep's (the exported preset's provenance).
`kfold_summary.json` records each fold's state, best checkpoint and score; it is
rewritten atomically after every fold, and `predict` / `tune-postprocess` read it.

Before anything is made, every path key and the checkpoint `ckpt_path` names are checked
(`pipeline.train.check_path_keys`, `initial_weights`); a retrain folder is held by one
`kfold` at a time (`retrain.retrain_lock`), and holds one preset's retrain only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..children import STALL_TIMEOUT_S, OutputWatch, child_env, kill_group, start
from ..constants import METRIC
from ..errors import ConfigError, UserError
from ..files import open_append
from ..numeric import flag, number_text
from ..runfolder import MANIFEST_FILE, STATUS_FILE, HistoryTail, clear_status, finite, read_status, status_problem
from .presets import preset_ref
from .retrain import (
    SUMMARY_FILE,
    FoldResult,
    check_sweep_split,
    load_summary,
    print_table,
    read_summary,
    retrain_lock,
    same_split,
    split_manifest,
    write_summary,
)

__all__ = ["fold_command", "main", "parse_folds", "retrain_dir", "run_kfold"]

log = logging.getLogger(__name__)

_OWN_KEYS = ("data.fold", "run_name", "output_dir", "resume_from_checkpoint", "logging.group", "preset")


# ----------------------------------------------------------------------------- arguments


def parse_folds(text: str | None, num_folds: int) -> list[int]:
    """`0-4`, `0,2,3`, `1`, or None / `all` -> sorted fold indices, each < num_folds."""
    if text is None or text.strip().lower() == "all":
        return list(range(num_folds))
    folds: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        a, b = number_text(lo), number_text(hi) if sep else number_text(lo)
        if not (isinstance(a, int) and isinstance(b, int)):  # plain ASCII integers (int() takes '١', '1_0')
            raise UserError(f"--folds {text!r}: expected e.g. 0-4 or 0,2,3")
        if a > b:
            raise UserError(f"--folds {text!r}: range {part} is empty")
        folds.update(range(a, b + 1))
    bad = sorted(f for f in folds if not 0 <= f < num_folds)
    if bad or not folds:
        raise UserError(f"--folds {text!r}: folds must be in 0..{num_folds - 1} (data.num_folds={num_folds})")
    return sorted(folds)


def retrain_dir(preset: str, cfg, out: str | os.PathLike | None = None) -> Path:
    """Where a retrain lives: `--out`, else `<output_dir>/<preset name>-kfold`."""
    if out is not None:
        return Path(out)
    return Path(cfg.output_dir) / f"{Path(preset).stem}-kfold"


def fold_command(
    preset: str, fold: int, root: Path, extra: Sequence[str], *, python: str = sys.executable
) -> list[str]:
    """The training command of one fold (what a sweep agent would run)."""
    return [
        python,
        "-m",
        "hrnet_sweep.train",
        f"preset={preset}",
        *extra,
        f"data.fold={fold}",
        f"output_dir={root.parent}",
        f"run_name={root.name}/fold{fold}",
        "resume_from_checkpoint=auto",
        f"logging.group={root.name}",
    ]


# ----------------------------------------------------------------------------- running


@dataclass
class _Job:
    fold: int
    run_dir: Path
    log: Path
    gpu: str | None = None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    tail: HistoryTail | None = None  # metrics.jsonl rows not printed yet
    best: float | None = None
    activity: OutputWatch | None = None  # its log and metrics: a fold silent for STALL_TIMEOUT_S is stopped
    stalled: str | None = None


def _print_progress(job: _Job, out: Callable[[str], None]) -> None:
    for row in job.tail.read() if job.tail else []:
        v = finite(row.get(METRIC))
        if v is not None:
            job.best = v if job.best is None else max(job.best, v)
            out(f"  fold {job.fold} epoch {row.get('epoch')}: {METRIC} {v:.4f} (best {job.best:.4f})")


def _fold_result(fold: int, run_dir: Path, status: Mapping[str, Any], **extra: Any) -> FoldResult:
    return FoldResult(
        fold,
        extra.pop("state", None) or status.get("state"),
        str(run_dir),
        best=status.get("best"),
        best_epoch=status.get("best_epoch"),
        best_ckpt=status.get("best_ckpt"),
        last_ckpt=status.get("last_ckpt"),
        **extra,
    )


def _finish(job: _Job, rc: int, manifest: Path) -> FoldResult:
    status = read_status(job.run_dir) or {}
    state = status.get("state") or ("crashed" if rc else "finished")
    if rc and state == "finished":
        state = "failed"
    if not status and (job.run_dir / STATUS_FILE).is_file():  # written, but not as training writes it
        import json

        try:
            problem = status_problem(json.loads((job.run_dir / STATUS_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            problem = f"unreadable ({type(err).__name__})"
        state = "failed"
        status = {"reason": f"{job.run_dir / STATUS_FILE}: {problem}"}
    if job.stalled is not None:
        state, status = "crashed", {**status, "reason": job.stalled}
    r = _fold_result(
        job.fold,
        job.run_dir,
        status,
        state=state,
        reason=status.get("reason") or (f"exit code {rc}; see {job.log}" if rc else None),
        exit_code=rc,
        seconds=round(time.monotonic() - job.started, 1),
        log=str(job.log),
        gpu=job.gpu,
    )
    fold_manifest = job.run_dir / MANIFEST_FILE
    if fold_manifest.is_file():
        why = same_split(manifest, fold_manifest)
        r.manifest_ok = why is None
        if why:
            r.state, r.reason = "failed", f"fold split differs from the retrain's {manifest}: {why}"
    return r


@dataclass
class _Retrain:
    """What every fold of one retrain shares."""

    preset: str
    cfg: Any
    root: Path
    manifest: Path
    extra: list[str]
    split_note: str
    python: str
    env: Mapping[str, str] | None
    threads: int | None
    say: Callable[[str], None]

    def write_summary(self, results: Mapping[int, FoldResult]) -> Path:
        return write_summary(self.root, self.preset, self.extra, self.cfg, results, self.split_note)


def _skip_finished(rt: _Retrain, fold_list: Sequence[int], results: dict[int, FoldResult]) -> list[_Job]:
    """Folds whose status.json says finished are recorded and skipped; the others are queued."""
    queue = []
    for k in fold_list:
        run_dir = rt.root / f"fold{k}"
        status = read_status(run_dir, strict=True)  # a damaged status.json is named, not guessed at
        if not status or status.get("state") != "finished":
            queue.append(_Job(k, run_dir, rt.root / f"fold{k}.log"))
            continue
        r = _fold_result(k, run_dir, status, skipped=True)
        if (run_dir / MANIFEST_FILE).is_file():
            r.manifest_ok = same_split(rt.manifest, run_dir / MANIFEST_FILE) is None
        results[k] = r
        best = "n/a" if r.best is None else f"{r.best:.4f}"
        rt.say(f"fold {k}: already finished (best {METRIC} {best}), skipped")
        if r.best_ckpt and not Path(r.best_ckpt).is_file():
            rt.say(
                f"fold {k}: its best checkpoint {r.best_ckpt} is gone: predict refuses the retrain and "
                f"tune-postprocess leaves the fold out; move {run_dir} away to train the fold again"
            )
    return queue


def _launch(rt: _Retrain, job: _Job, gpu: str | None) -> None:
    job.gpu = gpu
    resume = (job.run_dir / "checkpoints" / "last.ckpt").is_file()
    clear_status(job.run_dir)  # the old state (interrupted, failed) is superseded
    cmd = fold_command(rt.preset, job.fold, rt.root, rt.extra, python=rt.python)
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open_append(job.log, "fold log") as log:
        log.write(f"=== {datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(cmd)}\n".encode())
        log.flush()
        job.proc = start(cmd, env=child_env(rt.env, gpu=gpu, threads=rt.threads), log=log)
    job.started = time.monotonic()
    job.tail = HistoryTail(job.run_dir, skip_existing=True)
    on = f"GPU {gpu}" if gpu is not None else "CPU"
    rt.say(
        f"fold {job.fold}: {'resuming from last.ckpt' if resume else 'started'} on {on} "
        f"(pid {job.proc.pid}, log {job.log})"
    )


def _stop_running(rt: _Retrain, running: Mapping[int, _Job], results: dict[int, FoldResult]) -> None:
    """Ctrl-C: stop the running folds (they keep last.ckpt), killing any that hang."""
    rt.say("interrupted: stopping the running folds (they keep last.ckpt; run the same command to resume)")
    for job in running.values():
        kill_group(job.proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    for job in running.values():
        try:
            job.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(job.proc.pid, signal.SIGKILL)
            job.proc.wait()
        results[job.fold] = _finish(job, job.proc.returncode, rt.manifest)


def _stop_if_stalled(rt: _Retrain, job: _Job, stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
    """A fold whose log and metrics stayed unchanged for `stall_timeout_s` is hung (a
    deadlock, a dead file system): stop it as the sweep agent stops a silent run, so that
    `kfold` never waits on it for ever; it ends `crashed` with the reason."""
    if job.activity is None:
        job.activity = OutputWatch([job.log, job.run_dir / "metrics.jsonl"])
    still = job.activity.still_for()
    if job.stalled is None and still > stall_timeout_s:
        job.stalled = f"stalled: no output in its log or metrics for {still:.0f} s; stopped (see {job.log})"
        rt.say(f"fold {job.fold}: {job.stalled}")
        kill_group(job.proc.pid, signal.SIGTERM)
    elif job.stalled is not None and still > stall_timeout_s + 60:
        kill_group(job.proc.pid, signal.SIGKILL)


def _run_queue(
    rt: _Retrain, queue: list[_Job], slots: Sequence[str | None], results: dict[int, FoldResult], poll_s: float
) -> None:
    """Run the queued folds, one per slot at a time; on Ctrl-C stop them and re-raise."""
    running: dict[int, _Job] = {}
    free = list(range(len(slots)))
    try:
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                running[slot] = queue.pop(0)
                _launch(rt, running[slot], slots[slot])
            time.sleep(poll_s)
            for slot, job in list(running.items()):
                _print_progress(job, rt.say)
                rc = job.proc.poll()
                if rc is None:
                    _stop_if_stalled(rt, job)
                    continue
                _print_progress(job, rt.say)
                r = results[job.fold] = _finish(job, rc, rt.manifest)
                del running[slot]
                free.append(slot)
                best = "n/a" if r.best is None else f"{r.best:.4f} (epoch {r.best_epoch})"
                rt.say(
                    f"fold {job.fold}: {r.state} in {r.seconds:.0f} s, best {METRIC} {best}"
                    + (f"; {r.reason}" if r.state != "finished" and r.reason else "")
                )
                rt.write_summary(results)
    except KeyboardInterrupt:
        _stop_running(rt, running, results)
        raise


def _slots(gpus: Sequence[str] | None, cpu_jobs: int, n_folds: int) -> tuple[list[str | None], int | None, str]:
    """(one slot per concurrent fold, threads per CPU fold, where the folds run in words);
    `cpu_jobs` bounded by the cores and the folds (`machine.cap_count`)."""
    from ..machine import cap_count
    from ..sweep.launcher import detect_gpus

    if cpu_jobs < 1:
        raise UserError(f"--cpu-jobs {cpu_jobs} must be >= 1")
    found = list(detect_gpus() if gpus is None else gpus)
    if found and cpu_jobs > 1:
        log.warning("--cpu-jobs %d is ignored: the folds run on GPUs %s, one per GPU", cpu_jobs, ", ".join(found))
    if not found:
        cpu_jobs = cap_count(cpu_jobs, "--cpu-jobs", work=n_folds, work_name="folds", minimum=1)
    slots: list[str | None] = found or [None] * cpu_jobs
    threads = None if slots[0] is not None or cpu_jobs == 1 else max(1, (os.cpu_count() or 1) // cpu_jobs)
    where = (
        f"{len(slots)} GPU(s) {', '.join(slots)}"
        if slots[0] is not None
        else "the CPU, one fold at a time"
        if cpu_jobs == 1
        else f"the CPU, {cpu_jobs} folds at a time"
    )
    return slots, threads, where


def run_kfold(
    preset: str,
    folds: Sequence[int] | str | None = None,
    *,
    gpus: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    extra: Sequence[str] = (),
    poll_s: float = 1.0,
    python: str = sys.executable,
    printer: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cpu_jobs: int = 1,
) -> dict:
    """Train the folds of `preset`; return the summary (also in `<retrain>/kfold_summary.json`).

    Args:
        preset: shipped preset name or YAML path (e.g. from `best --export`).
        folds: fold indices, or text like `0-4`; default every fold.
        gpus: GPU ids, one fold per GPU at a time; None detects them; [] = CPU.
        cpu_jobs: on the CPU, folds trained at once (default one at a time), each with
            cores / cpu_jobs threads.
        out: the retrain folder (default `<output_dir>/<preset name>-kfold`).
        extra: more `key=value` overrides for every fold (not the keys kfold sets itself).
    """
    from ..config import load_config, parse_overrides, warn_ignored_keys
    from .train import check_path_keys, initial_weights

    say = printer or (lambda s: print(s, flush=True))
    extra = list(extra)
    own = sorted(set(parse_overrides(extra)) & set(_OWN_KEYS))
    if own:
        raise UserError(f"kfold sets {', '.join(own)} itself; drop them from the overrides (use --out for the folder)")
    preset = preset_ref(preset)
    cfg = load_config([f"preset={preset}", *extra])
    if cfg.data.fold is None:
        raise ConfigError(
            "data.fold=null is train/val mode; kfold needs fold mode (data.num_folds folds of train_json)"
        )
    fold_list = folds if isinstance(folds, (list, tuple)) else parse_folds(folds, cfg.data.num_folds)
    fold_list = parse_folds(",".join(map(str, fold_list)), cfg.data.num_folds)
    warn_ignored_keys(cfg, parse_overrides(extra))
    check_path_keys(cfg)  # every fold's paths, before the retrain folder is made
    if cfg.ckpt_path:
        initial_weights(cfg, cfg.ckpt_path)  # read as data and checked against the model, once for all folds
    slots, threads, where = _slots(gpus, cpu_jobs, len(fold_list))
    root = retrain_dir(preset, cfg, out).resolve()
    _check_same_preset(root, preset)
    root.mkdir(parents=True, exist_ok=True)
    with retrain_lock(root):
        return _run_locked(preset, cfg, root, fold_list, extra, slots, threads, where, python, env, say, poll_s)


def _check_same_preset(root: Path, preset: str) -> None:
    """A retrain folder holds one preset's retrain: another preset's (two presets of one
    name in different folders share `<output_dir>/<name>-kfold`) is refused by name."""
    summary = root / SUMMARY_FILE
    if summary.is_file():
        held = read_summary(summary)["preset"]
        if held != preset:
            raise UserError(
                f"{root} holds the retrain of preset {held} ({summary}), not of {preset}; use --out to give this "
                "retrain its own folder"
            )


def _run_locked(
    preset: str,
    cfg: Any,
    root: Path,
    fold_list: list[int],
    extra: list[str],
    slots: list[str | None],
    threads: int | None,
    where: str,
    python: str,
    env: Mapping[str, str] | None,
    say: Callable[[str], None],
    poll_s: float,
) -> dict:
    manifest = split_manifest(cfg, root)
    rt = _Retrain(
        preset, cfg, root, manifest, extra, check_sweep_split(preset, cfg, manifest), python, env, threads, say
    )
    say(f"k-fold retrain {root.name}: folds {fold_list} of {cfg.data.num_folds} on {where}; {rt.split_note}")
    say(f"  folder {root}")
    if cfg.wandb:
        say(f"  W&B: every fold logs to project {cfg.logging.project}, group {root.name}")
    else:
        say(f"  W&B: off (add wandb=true to log every fold to W&B, grouped as {root.name})")
    results: dict[int, FoldResult] = {}
    queue = _skip_finished(rt, fold_list, results)
    if results:
        rt.write_summary(results)
    interrupted = False
    try:
        _run_queue(rt, queue, slots, results, poll_s)
    except KeyboardInterrupt:
        interrupted = True
    path = rt.write_summary(results)
    doc, _ = load_summary(path)
    print_table(doc, say)
    say(f"summary: {path}")
    if interrupted:
        raise KeyboardInterrupt
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    from ..sweep.launcher import parse_gpus

    ap = argparse.ArgumentParser(
        prog="hrnet_sweep kfold",
        description=(
            "Retrain every fold of a preset (one fold per GPU, resumable, finished folds skipped) and record each "
            "fold's best checkpoint and score in <retrain>/kfold_summary.json."
        ),
    )
    ap.add_argument("preset", help="preset name or YAML (e.g. from hrnet_sweep best --export)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra overrides for every fold")
    ap.add_argument("--folds", default=None, help="folds to train, e.g. 0-4 or 0,2 (default: all)")
    ap.add_argument("--gpus", help="GPU ids, e.g. 0,1 (default: all visible; 'cpu' = CPU)")
    ap.add_argument("--out", help="retrain folder (default <output_dir>/<preset name>-kfold)")
    ap.add_argument(
        "--cpu-jobs", type=flag(int, ge=1), default=1, help="without GPUs: folds trained at once (default 1)"
    )
    args = ap.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    doc = run_kfold(
        args.preset,
        args.folds,
        gpus=parse_gpus(args.gpus) if args.gpus is not None else None,
        out=args.out,
        extra=args.overrides,
        cpu_jobs=args.cpu_jobs,
    )
    bad = [k for k, f in doc["folds"].items() if f.get("state") != "finished"]
    if bad:
        print(f"folds not finished: {', '.join(bad)}; run the same command again to resume them", file=sys.stderr)
        return 1
    return 0
