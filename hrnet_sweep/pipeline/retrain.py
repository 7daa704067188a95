"""A k-fold retrain's folder: its split and its summary, the files `kfold` writes and
`predict` / `tune-postprocess` read.

* `folds.json` (format: `hrnet_sweep.folds`): the retrain's own split, computed from the
  preset's data. A retrain folder made with another split is refused, every fold's
  manifest is compared with it, and so is the sweep's (recorded in the exported
  preset's provenance), so a retrain never silently trains on other folds.
* `kfold_summary.json`: each fold's state, best checkpoint and score (paths relative to
  the folder, so it can be moved), the mean best score and the tuned post-processing;
  rewritten atomically after every fold. Read back through `read_summary`, which checks
  its shape: a key of the wrong type is a `DataError` naming the file and the key.
* `kfold.lock`: held by the one `kfold` or `tune-postprocess` working in the folder
  (`retrain_lock`); a second one is told who holds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..constants import METRIC
from ..errors import DataError, UserError
from ..files import field, hold_lock, mapping
from ..runfolder import MANIFEST_FILE
from .presets import preset_ref, read_provenance

__all__ = [
    "LOCK_FILE",
    "SUMMARY_FILE",
    "FoldResult",
    "check_sweep_split",
    "load_summary",
    "print_table",
    "read_summary",
    "retrain_lock",
    "same_split",
    "split_manifest",
    "write_summary",
]

SUMMARY_FILE = "kfold_summary.json"
SUMMARY_VERSION = 1
LOCK_FILE = "kfold.lock"


def retrain_lock(root: Path):
    """The retrain folder's lock (`files.hold_lock`): one `kfold` or `tune-postprocess` in
    it at a time; it dies with its holder, so a killed retrain resumes as before."""
    return hold_lock(root / LOCK_FILE, f"retrain folder {root}")


# ----------------------------------------------------------------------------- manifests


def split_manifest(cfg, root: Path) -> Path:
    """Write (or check) the retrain's own manifest, computed from the preset's data."""
    from ..folds import assign_folds, read_manifest, word_counts, write_manifest
    from ..formats import load_annotations

    d = cfg.data
    train_json = d.resolved_root() / d.train_json
    ann = load_annotations(train_json)
    counts = word_counts(ann)
    assignment = assign_folds(list(counts), list(counts.values()), d.num_folds, d.fold_seed)
    path = root / MANIFEST_FILE
    if path.is_file():
        old = read_manifest(path)
        if not old.matches(train_json, d.num_folds, d.fold_seed) or old.assignment != assignment:
            raise UserError(
                f"{root} holds a retrain made with another split ({path}: num_folds={old.num_folds}, "
                f"seed={old.seed}, annotations sha256 {old.sha256[:12]}); now data.num_folds="
                f"{d.num_folds}, data.fold_seed={d.fold_seed}, {train_json}. Use another --out"
            )
        return path
    write_manifest(path, train_json, assignment, d.num_folds, d.fold_seed, word_counts_by_name=counts)
    return path


def same_split(a_path: str | os.PathLike, b_path: str | os.PathLike) -> str | None:
    """None when two manifests describe the same split, else why not."""
    from ..folds import read_manifest

    a, b = read_manifest(a_path), read_manifest(b_path)
    if a.sha256 != b.sha256:
        return f"annotation files differ (sha256 {a.sha256[:12]} vs {b.sha256[:12]})"
    if (a.num_folds, a.seed) != (b.num_folds, b.seed):
        return f"num_folds/seed {a.num_folds}/{a.seed} vs {b.num_folds}/{b.seed}"
    if a.assignment != b.assignment:
        n = sum(1 for k in a.assignment if a.assignment.get(k) != b.assignment.get(k))
        return f"{n} images are in other folds"
    return None


def check_sweep_split(preset: str, cfg, manifest: Path) -> str:
    """Compare the retrain's split with the sweep's, as recorded by `best --export`."""

    p = Path(preset)
    prov = read_provenance(p) if p.suffix in (".yaml", ".yml") and p.is_file() else {}
    folds = prov.get("folds") or {}
    if not folds:
        return "no sweep provenance in the preset: split not compared with a sweep"
    if not isinstance(folds, dict):
        raise DataError(f"{preset}: provenance key folds is a {type(folds).__name__}, not a mapping")
    d = cfg.data
    for key, mine in (("num_folds", d.num_folds), ("fold_seed", d.fold_seed), ("train_json", d.train_json)):
        if key in folds and folds[key] != mine:
            raise UserError(
                f"the sweep ran with data.{key}={folds[key]!r} but this retrain uses {mine!r}: the folds "
                f"would differ from the sweep's; drop the override or export again"
            )
    sweep_manifest = folds.get("manifest")
    if sweep_manifest and Path(sweep_manifest).is_file():
        why = same_split(manifest, sweep_manifest)
        if why:
            raise UserError(f"the retrain's folds differ from the sweep's ({sweep_manifest}): {why}")
        return f"split identical to the sweep's ({sweep_manifest})"
    return "split settings equal the sweep's (num_folds, fold_seed, train_json)"


# ----------------------------------------------------------------------------- summary


@dataclass
class FoldResult:
    fold: int
    state: str  # finished | stopped | failed | interrupted | crashed | pending | skipped-finished
    run_dir: str
    best: float | None = None
    best_epoch: int | None = None
    best_ckpt: str | None = None
    last_ckpt: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    seconds: float | None = None
    log: str | None = None
    gpu: str | None = None
    skipped: bool = False
    manifest_ok: bool | None = None


def _rel(path: str | None, root: Path) -> str | None:
    if not path:
        return path
    p = Path(path).resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def write_summary(
    root: Path, preset: str, extra: Sequence[str], cfg, results: Mapping[int, FoldResult], split_note: str
) -> Path:
    from ..files import atomic_write_json

    path = root / SUMMARY_FILE
    old = read_summary(path) if path.is_file() else {}
    folds = dict(old.get("folds") or {})
    for k, r in results.items():
        doc = {**r.__dict__}
        for key in ("run_dir", "best_ckpt", "last_ckpt", "log"):
            doc[key] = _rel(doc[key], root)
        folds[str(k)] = doc
    finished = [f for f in folds.values() if f.get("state") == "finished" and f.get("best") is not None]
    summary = {
        "version": SUMMARY_VERSION,
        "retrain": root.name,
        "preset": preset_ref(preset),
        "overrides": list(extra),
        "metric": METRIC,
        "num_folds": cfg.data.num_folds,
        "fold_seed": cfg.data.fold_seed,
        "train_json": str(cfg.data.resolved_root() / cfg.data.train_json),
        "manifest": MANIFEST_FILE,
        "split": split_note,
        "folds": dict(sorted(folds.items(), key=lambda kv: int(kv[0]))),
        "mean_best": (sum(f["best"] for f in finished) / len(finished)) if finished else None,
        "postprocess": old.get("postprocess"),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return atomic_write_json(path, summary, indent=2)


_FOLD_KEYS: dict[str, type | tuple[type, ...]] = {
    "state": str,
    "run_dir": str,
    "best": float,
    "best_epoch": int,
    "best_ckpt": str,
    "last_ckpt": str,
    "reason": str,
    "exit_code": int,
    "seconds": float,
    "log": str,
    "gpu": str,
    "skipped": bool,
    "manifest_ok": bool,
}


def read_summary(path: str | os.PathLike) -> dict:
    """A `kfold_summary.json` as written, its shape checked: an object with `preset` (text),
    `overrides` (a list of text), `folds` (fold number -> an object of `FoldResult`'s
    keys, each of its type or null), `mean_best` (a number or null) and `postprocess`
    (null, or its `best` setting); a `DataError` naming the file and the key otherwise."""
    from ..files import read_json

    doc = mapping(read_json(path), path)
    version = field(doc, "version", int, path, optional=True)
    if version is not None and version != SUMMARY_VERSION:
        raise DataError(f"{path}: key version is {version}; this hrnet_sweep reads version {SUMMARY_VERSION}")
    field(doc, "preset", str, path)
    overrides = field(doc, "overrides", list, path, optional=True) or []
    for i, o in enumerate(overrides):
        if not isinstance(o, str):
            raise DataError(f"{path}: key overrides.{i} is {o!r}, not a key=value text")
    for key, kind in (("mean_best", float), ("num_folds", int), ("fold_seed", int), ("train_json", str)):
        field(doc, key, kind, path, optional=True)
    folds = field(doc, "folds", dict, path, optional=True) or {}
    for k, f in folds.items():
        if not str(k).isdigit():
            raise DataError(f"{path}: key folds.{k} is no fold number")
        mapping(f, path, f"folds.{k}")
        for key, kind in _FOLD_KEYS.items():
            field(f, key, kind, path, optional=key != "state", prefix=f"folds.{k}.")
    pp = field(doc, "postprocess", dict, path, optional=True)
    if pp is not None:
        best = field(pp, "best", dict, path, optional=True, prefix="postprocess.")
        for key, kind in (("thresh", float), ("box_thresh", float), ("unclip_ratio", float), ("use_polygon", bool)):
            if best is not None:
                field(best, key, kind, path, prefix="postprocess.best.")
        field(pp, "hmean", float, path, optional=True, prefix="postprocess.")
    return doc


def load_summary(path_or_dir: str | os.PathLike) -> tuple[dict, Path]:
    """Read a `kfold_summary.json` (or the retrain folder holding it), shape checked
    (`read_summary`); paths resolved against its folder."""
    p = Path(path_or_dir)
    path = p / SUMMARY_FILE if p.is_dir() else p
    if not path.is_file():
        raise UserError(f"{path}: no k-fold summary (run hrnet_sweep kfold first)")
    doc = read_summary(path)
    root = path.parent
    for f in (doc.get("folds") or {}).values():
        for key in ("run_dir", "best_ckpt", "last_ckpt", "log"):
            if f.get(key) and not Path(f[key]).is_absolute():
                f[key] = str(root / f[key])
    return doc, root


def print_table(doc: Mapping[str, Any], say: Callable[[str], None]) -> None:
    say(f"{'fold':>4}  {'state':<11} {METRIC:>9}  {'epoch':>5}  best checkpoint")
    for k, f in doc["folds"].items():
        best = "-" if f.get("best") is None else f"{f['best']:.4f}"
        epoch = "-" if f.get("best_epoch") is None else str(f["best_epoch"])
        say(f"{k:>4}  {f.get('state', '?'):<11} {best:>9}  {epoch:>5}  {f.get('best_ckpt') or '-'}")
    if doc.get("mean_best") is not None:
        say(f"mean best {METRIC} over finished folds: {doc['mean_best']:.4f}")
