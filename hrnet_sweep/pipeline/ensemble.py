"""From a k-fold retrain to its ensemble: resolve the fold checkpoints and the tuned
post-processing, and cache the out-of-fold probability maps.

`dbnet.inference` turns .ckpt files into an averaged probability map per image
(optionally weighted, with flip TTA) and post-processes it once. This module adds what a
retrain knows: a preset given to kfold (or the retrain folder, or its
`kfold_summary.json`) means "every finished fold's best checkpoint, with the
post-processing that `tune-postprocess` wrote into the preset" (`hrnet_sweep predict`
routes its arguments in `pipeline.predict`).

Out-of-fold maps (`cache_oof_maps`): each fold's best checkpoint on its own validation
images, stored once as 8-bit PNGs under `<retrain>/oof/` in the frame prediction
post-processes (`dbnet.inference.ProbMap`: network resolution, uint8), keyed by the
checkpoint's size and mtime so a retrained fold is recomputed and nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = ["OOFCache", "Retrain", "cache_oof_maps", "fold_and_ensemble_maps", "resolve_retrain"]

OOF_DIR = "oof"
OOF_INDEX = "index.json"
OOF_VERSION = 2
"""2: maps in the network's frame (1: resized to the original image, at most 1024 px)."""


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
        from .retrain import SUMMARY_FILE

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
                    raise UserError(
                        f"fold {k} of {self.root} is {f.get('state')} without a best checkpoint; "
                        f"finish it with: hrnet_sweep kfold {self.preset}"
                    )
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
    from ..config import load_config
    from .kfold import retrain_dir
    from .presets import preset_ref
    from .retrain import SUMMARY_FILE

    ref = preset_ref(preset)
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
    from ..config import apply_overrides, load_config
    from .retrain import SUMMARY_FILE, load_summary

    p = Path(target)
    if p.is_dir() or p.suffix == ".json":
        summary_path = p / SUMMARY_FILE if p.is_dir() else p
    else:
        summary_path = _summary_for_preset(str(target))
        if summary_path is None:
            raise UserError(
                f"no k-fold retrain found for preset {target} (looked for {SUMMARY_FILE} next to it and "
                f"in <output_dir>/<preset name>-kfold); run hrnet_sweep kfold {target}, or pass the "
                "retrain folder"
            )
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

    from ..files import atomic_path

    ok, buf = cv2.imencode(".png", prob, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise UserError(f"cannot encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def cache_oof_maps(
    target: Retrain, *, device: str | None = None, tta_flip: bool = False, progress: bool = True
) -> OOFCache:
    """Each finished fold's best checkpoint on its own validation images, cached once."""
    from ..dbnet.inference import load_checkpoint, pick_device, probability_maps
    from ..dbnet.postprocess import to_uint8
    from ..files import atomic_write_json, read_json
    from ..folds import read_manifest
    from ..formats import clamp_polygon, load_annotations
    from ..runfolder import MANIFEST_FILE

    cfg = target.cfg
    folder = target.root / OOF_DIR
    index_path = folder / OOF_INDEX
    index = read_json(index_path) if index_path.is_file() else {}
    if index.get("version") != OOF_VERSION or index.get("tta_flip") != tta_flip:
        index = {}
    index = {
        "version": OOF_VERSION,
        "tta_flip": tta_flip,
        "folds": index.get("folds", {}),
        "images": index.get("images", {}),
    }
    manifest = read_manifest(target.root / MANIFEST_FILE)
    train_json = cfg.data.resolved_root() / cfg.data.train_json
    ann = load_annotations(train_json)
    image_dir = cfg.data.resolved_root() / cfg.data.train_images
    dev = pick_device(device)
    folds = target.finished_folds()
    for k, ckpt, _ in folds:
        names = manifest.fold_names(k)
        entry = index["folds"].get(str(k))
        cached = (
            entry
            and entry.get("stamp") == _stamp(ckpt)
            and all((folder / index["images"].get(n, {}).get("file", "-")).is_file() for n in names)
        )
        if cached:
            continue
        print(f"out-of-fold maps: fold {k}, {len(names)} images, {ckpt.name}", flush=True)
        model = load_checkpoint(ckpt, dev)
        for name, pm in probability_maps([model], image_dir, names, tta_flip=tta_flip, device=dev, progress=progress):
            rel = f"fold{k}/{Path(name).stem}.png"
            _save_png(folder / rel, to_uint8(pm.prob))
            index["images"][name] = {"fold": k, "size": list(pm.image_size), "file": rel}
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


# ----------------------------------------------------------------------------- fold vs ensemble


def fold_and_ensemble_maps(
    models: Sequence[Any],
    image_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    *,
    weights: Sequence[float] | None = None,
    tta_flip: bool = False,
    device: Any = "cpu",
    progress: bool = False,
) -> Iterator[tuple[str, list[Any], Any]]:
    """Per image: each model's map and their (weighted) average, each model run once."""
    from ..dbnet.inference import ProbMap, average_maps, model_maps, normalized_weights

    w = normalized_weights(weights, len(models))
    for name, size, maps in model_maps(models, image_dir, names, tta_flip=tta_flip, device=device, progress=progress):
        yield name, [ProbMap(m, size) for m in maps], average_maps(maps, size, w)
