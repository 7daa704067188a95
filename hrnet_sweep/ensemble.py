"""From a k-fold retrain to its ensemble: resolve the fold checkpoints and the tuned
post-processing, cache the out-of-fold probability maps, and route `hrnet_sweep predict`.

`predict.py` turns .ckpt files into an averaged probability map per image (optionally
weighted, with flip TTA) and post-processes it once. This module adds what a retrain
knows: `hrnet_sweep predict preset.yaml` (or the retrain folder, or its
`kfold_summary.json`) means "every finished fold's best checkpoint, with the
post-processing that `tune-postprocess` wrote into the preset". Plain .ckpt arguments
are an ensemble of those checkpoints, with the post-processing stored in the first.

Out-of-fold maps (`cache_oof_maps`): each fold's best checkpoint on its own validation
images, stored once as 8-bit PNGs (longest side capped) under `<retrain>/oof/`, keyed by
the checkpoint's size and mtime so a retrained fold is recomputed and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import UserError

__all__ = ["OOFCache", "Retrain", "apply_tuned_postprocess", "cache_oof_maps", "fold_and_ensemble_maps",
           "main", "resolve_retrain", "write_postprocess_into_preset"]

OOF_DIR = "oof"
OOF_INDEX = "index.json"
TUNE_FILE = "tune_postprocess.json"
TUNED_MARK = "# tuned post-processing"
PP_KEYS = ("thresh", "box_thresh", "unclip_ratio", "use_polygon")


# ----------------------------------------------------------------------------- resolving a retrain


@dataclass
class Retrain:
    """A k-fold retrain: its summary, folder, preset and resolved config."""

    summary: dict
    root: Path
    preset: str
    cfg: Any  # hrnet_sweep.config.Config, post-processing as tuned
    notes: list[str] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        from .kfold import SUMMARY_FILE

        return self.root / SUMMARY_FILE

    @property
    def preset_file(self) -> Path | None:
        p = Path(self.preset)
        return p if p.suffix in (".yaml", ".yml") and p.is_file() else None

    def finished_folds(self, folds: Sequence[int] | None = None) -> list[tuple[int, Path, float | None]]:
        """(fold, best checkpoint, best score) of each finished fold (or of `folds`)."""
        out = []
        for k, f in sorted(self.summary.get("folds", {}).items(), key=lambda kv: int(kv[0])):
            k = int(k)
            if folds is not None and k not in folds:
                continue
            ckpt = f.get("best_ckpt")
            if f.get("state") != "finished" or not ckpt or not Path(ckpt).is_file():
                if folds is not None:
                    raise UserError(f"fold {k} of {self.root} is {f.get('state')} without a best checkpoint; "
                                    f"finish it with: hrnet_sweep kfold {self.preset}")
                continue
            out.append((k, Path(ckpt), f.get("best")))
        if folds is not None:
            missing = sorted(set(folds) - {k for k, _, _ in out})
            if missing:
                raise UserError(f"folds {missing} are not in {self.summary_path}")
        if not out:
            raise UserError(f"{self.summary_path}: no finished fold with a best checkpoint yet")
        return out


def _summary_for_preset(preset: str) -> Path | None:
    from .config import load_config
    from .kfold import SUMMARY_FILE, _preset_ref, retrain_dir

    ref = _preset_ref(preset)
    cfg = load_config([f"preset={ref}"])
    candidates = []
    if Path(ref).suffix in (".yaml", ".yml"):
        candidates += [Path(ref).parent / SUMMARY_FILE, Path(ref).parent / f"{Path(ref).stem}-kfold" / SUMMARY_FILE]
    candidates.append(retrain_dir(ref, cfg) / SUMMARY_FILE)
    for c in candidates:
        if c.is_file():
            try:
                doc = json.loads(c.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if doc.get("preset") == ref:
                return c
    return None


def resolve_retrain(target: str | os.PathLike) -> Retrain:
    """A retrain from its preset (as given to kfold), folder, or `kfold_summary.json`."""
    from .config import apply_overrides, load_config
    from .kfold import SUMMARY_FILE, load_summary

    p = Path(target)
    if p.is_dir() or p.suffix == ".json":
        summary_path = p / SUMMARY_FILE if p.is_dir() else p
    else:
        summary_path = _summary_for_preset(str(target))
        if summary_path is None:
            raise UserError(f"no k-fold retrain found for preset {target} (looked for {SUMMARY_FILE} next to it and "
                            f"in <output_dir>/<preset name>-kfold); run hrnet_sweep kfold {target}, or pass the "
                            "retrain folder")
    doc, root = load_summary(summary_path)
    preset = doc["preset"]
    notes = []
    try:
        cfg = load_config([f"preset={preset}", *doc.get("overrides", [])])
    except UserError as err:
        raise UserError(f"{summary_path}: its preset {preset} no longer loads: {err}") from None
    tuned = (doc.get("postprocess") or {}).get("best")
    is_file = Path(preset).suffix in (".yaml", ".yml")
    if tuned and not is_file:
        # a shipped preset cannot hold the tuned values: the summary does
        cfg = apply_overrides(cfg, {f"models.postprocess.{k}": v for k, v in tuned.items()})
        notes.append(f"post-processing tuned on out-of-fold maps ({summary_path})")
    elif tuned and is_file:
        notes.append(f"post-processing from {preset} (tuned on out-of-fold maps)")
    return Retrain(doc, root, preset, cfg, notes)


# ----------------------------------------------------------------------------- out-of-fold maps


@dataclass
class OOFCache:
    root: Path
    paths: dict[str, str]  # image -> cached PNG
    sizes: dict[str, tuple[int, int]]  # image -> original (h, w)
    gts: dict[str, list[np.ndarray]]  # image -> GT polygons, original pixels
    folds: list[int]


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _save_png(path: Path, prob: np.ndarray) -> None:
    import cv2

    from .io import atomic_path

    ok, buf = cv2.imencode(".png", prob, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise UserError(f"cannot encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def to_uint8(prob: np.ndarray, max_side: int | None) -> np.ndarray:
    """A float 0..1 map as uint8 0..255, shrunk (INTER_AREA) so its longest side <= max_side."""
    import cv2

    h, w = prob.shape
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        prob = cv2.resize(prob, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def cache_oof_maps(target: Retrain, *, max_side: int = 1024, device: str | None = None, tta_flip: bool = False,
                   progress: bool = True) -> OOFCache:
    """Each finished fold's best checkpoint on its own validation images, cached once."""
    from .folds import read_manifest
    from .io import atomic_write_json, clamp_polygon, load_annotations, read_json
    from .kfold import MANIFEST_FILE
    from .predict import load_checkpoint, pick_device, probability_maps

    cfg = target.cfg
    folder = target.root / OOF_DIR
    index_path = folder / OOF_INDEX
    index = read_json(index_path) if index_path.is_file() else {}
    if index.get("max_side") != max_side or index.get("tta_flip") != tta_flip:
        index = {}
    index = {"version": 1, "max_side": max_side, "tta_flip": tta_flip, "folds": index.get("folds", {}),
             "images": index.get("images", {})}
    manifest = read_manifest(target.root / MANIFEST_FILE)
    train_json = cfg.data.resolved_root() / cfg.data.train_json
    ann = load_annotations(train_json)
    image_dir = cfg.data.resolved_root() / cfg.data.train_images
    dev = pick_device(device)
    folds = target.finished_folds()
    for k, ckpt, _ in folds:
        names = manifest.fold_names(k)
        entry = index["folds"].get(str(k))
        cached = entry and entry.get("stamp") == _stamp(ckpt) and all(
            (folder / index["images"].get(n, {}).get("file", "-")).is_file() for n in names)
        if cached:
            continue
        print(f"out-of-fold maps: fold {k}, {len(names)} images, {ckpt.name}", flush=True)
        model = load_checkpoint(ckpt, dev)
        for name, prob in probability_maps([model], image_dir, names, tta_flip=tta_flip, device=dev,
                                           progress=progress):
            rel = f"fold{k}/{Path(name).stem}.png"
            _save_png(folder / rel, to_uint8(prob, max_side))
            index["images"][name] = {"fold": k, "size": list(prob.shape), "file": rel}
        index["folds"][str(k)] = {"ckpt": str(ckpt), "stamp": _stamp(ckpt), "images": len(names)}
        atomic_write_json(index_path, index, indent=1)
    paths, sizes, gts = {}, {}, {}
    for k, _, _ in folds:
        for name in manifest.fold_names(k):
            e = index["images"][name]
            h, w = e["size"]
            paths[name] = str(folder / e["file"])
            sizes[name] = (h, w)
            gts[name] = [clamp_polygon(p, w, h) for p in ann[name].polygons()]
    return OOFCache(folder, paths, sizes, gts, [k for k, _, _ in folds])


# ----------------------------------------------------------------------------- writing tuned values


def write_postprocess_into_preset(path: str | os.PathLike, values: Mapping[str, Any], note: str) -> Path:
    """Set `models.postprocess.*` in a preset YAML, keeping its comment header (the
    provenance of `best --export`), atomically; the result must load."""
    import yaml

    from .io import atomic_write_text
    from .select import _check_loads

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        if not line.startswith(TUNED_MARK):
            header.append(line)
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a preset must be a mapping")
    for key in list(doc):  # dotted spellings of the same keys would shadow the nested ones
        if key == "models.postprocess" or any(key == f"models.postprocess.{k}" for k in values):
            del doc[key]
    pp = doc.setdefault("models", {}).setdefault("postprocess", {})
    for k, v in values.items():
        pp[k] = bool(v) if k == "use_polygon" else float(v)
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    out = "\n".join(header + [f"{TUNED_MARK}: {note}"]) + "\n" + body
    _check_loads(out)
    return atomic_write_text(path, out)


def apply_tuned_postprocess(target: Retrain, best: Mapping[str, Any], baseline: Mapping[str, Any] | None,
                            table: Sequence[Mapping[str, Any]], *, write_preset: bool = True) -> list[Path]:
    """Record the tuning: `<retrain>/tune_postprocess.json`, the summary's `postprocess`
    entry and, when the preset is a YAML file, its `models.postprocess.*`."""
    from .io import atomic_write_json, read_json

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    values = {k: best[k] for k in PP_KEYS}
    written = [atomic_write_json(target.root / TUNE_FILE, {
        "best": dict(best), "baseline": dict(baseline) if baseline else None, "table": list(table), "date": date,
    }, indent=1)]
    preset_file = target.preset_file if write_preset else None
    if preset_file is not None:
        was = f", preset's own {baseline['hmean']:.4f}" if baseline else ""
        note = f"out-of-fold H-Mean {best['hmean']:.4f}{was} ({date}, {target.root / TUNE_FILE})"
        written.append(write_postprocess_into_preset(preset_file, values, note))
    if write_preset:
        summary = read_json(target.summary_path)
        summary["postprocess"] = {"best": values, "hmean": best["hmean"],
                                  "baseline_hmean": baseline["hmean"] if baseline else None, "date": date,
                                  "preset": str(preset_file) if preset_file else None}
        written.append(atomic_write_json(target.summary_path, summary, indent=2))
    return written


# ----------------------------------------------------------------------------- fold vs ensemble


def fold_and_ensemble_maps(models: Sequence[Any], image_dir: str | os.PathLike, names: Sequence[str] | None = None,
                           *, weights: Sequence[float] | None = None, tta_flip: bool = False, device: Any = "cpu",
                           progress: bool = False) -> Iterator[tuple[str, list[np.ndarray], np.ndarray]]:
    """Per image: each model's map and their (weighted) average, each model run once."""
    from .predict import probability_maps

    w = np.asarray(weights if weights is not None else [1.0] * len(models), np.float64)
    w = w / w.sum()
    streams = [probability_maps([m], image_dir, names, tta_flip=tta_flip, device=device, progress=progress and i == 0)
               for i, m in enumerate(models)]
    for items in zip(*streams):
        name = items[0][0]
        maps = [prob for _, prob in items]
        yield name, maps, sum(wi * m for wi, m in zip(w, maps)).astype(np.float32)


# ----------------------------------------------------------------------------- predict routing


def _is_ckpt(arg: str) -> bool:
    return arg.endswith(".ckpt")


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep predict`: .ckpt files, or a preset / retrain (its folds) -> JSON + CSV."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import predict as _predict

    ap = argparse.ArgumentParser(prog="hrnet_sweep predict", description=(
        "Fold ensemble -> prediction JSON + submission CSV. TARGET is the preset given to kfold (its retrain is "
        "found), the retrain folder, its kfold_summary.json, or one or more .ckpt files."))
    ap.add_argument("targets", nargs="+", help="preset, retrain folder, kfold_summary.json, or .ckpt files")
    ap.add_argument("--images", required=True, help="folder of test images")
    ap.add_argument("--out", required=True, help="submission CSV to write")
    ap.add_argument("--json", help="prediction JSON to write (default: next to the CSV)")
    ap.add_argument("--tta", choices=["none", "flip"], default="none")
    ap.add_argument("--weights", type=float, nargs="+", help="one weight per checkpoint / fold")
    ap.add_argument("--folds", help="folds of the retrain to use, e.g. 0,2 (default: every finished fold)")
    ap.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--no-overwrite", action="store_true", help="refuse to replace existing outputs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="post-processing overrides, e.g. models.postprocess.box_thresh=0.5")
    ap.add_argument("--gt", help="annotation JSON of the test images: print the H-Mean")
    args = ap.parse_args(argv)
    from .config import apply_overrides, parse_overrides
    from .kfold import parse_folds
    from .submission import validate_submission

    if all(_is_ckpt(t) for t in args.targets):
        checkpoints = list(args.targets)
        if args.folds:
            raise UserError("--folds selects folds of a retrain; with .ckpt files, list the ones to use")
        cfg = _predict.load_checkpoint(checkpoints[0]).cfg
        print(f"ensemble of {len(checkpoints)} checkpoint(s)" if len(checkpoints) > 1 else f"checkpoint {checkpoints[0]}")
    else:
        if len(args.targets) != 1:
            raise UserError("give one preset / retrain folder, or only .ckpt files")
        target = resolve_retrain(args.targets[0])
        cfg = target.cfg
        chosen = parse_folds(args.folds, cfg.data.num_folds) if args.folds else None
        folds = target.finished_folds(chosen)
        checkpoints = [str(c) for _, c, _ in folds]
        print(f"retrain {target.root}: folds {[k for k, _, _ in folds]} "
              f"(best {', '.join('-' if b is None else f'{b:.4f}' for _, _, b in folds)})")
        for note in target.notes:
            print(f"  {note}")
    if args.set:
        cfg = apply_overrides(cfg, parse_overrides(args.set))
    pp = cfg.models.postprocess
    print(f"post-processing: {'polygon' if pp.use_polygon else 'box'} mode, thresh {pp.thresh}, box_thresh "
          f"{pp.box_thresh}, unclip_ratio {pp.unclip_ratio}; TTA {args.tta}", flush=True)
    out_json = args.json or str(Path(args.out).with_suffix(".json"))
    preds = _predict.predict(checkpoints, args.images, out_csv=args.out, out_json=out_json, postprocess=pp,
                             weights=args.weights, tta_flip=args.tta == "flip", device=args.device,
                             overwrite=not args.no_overwrite)
    n = sum(len(v) for v in preds.values())
    print(f"{len(preds)} images, {n} detections -> {args.out} and {out_json}")
    report = validate_submission(args.out, images=args.images)
    print(f"submission check: {'valid' if report.valid else 'INVALID'} ({len(report.errors)} errors, "
          f"{len(report.warnings)} warnings; details: hrnet_sweep validate-submission {args.out} --images "
          f"{args.images})")
    if args.gt:
        from .io import load_annotations, load_predictions
        from .metric import evaluate

        # score the file as submitted (integer points), the number `hrnet_sweep eval` gives for it
        gt = {name: a.polygons() for name, a in load_annotations(args.gt).items()}
        res = evaluate(gt, load_predictions(args.out))
        print(f"H-Mean {res.hmean:.4f} (precision {res.precision:.4f}, recall {res.recall:.4f}) on {len(gt)} images")
    return 0 if report.valid else 2
