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
checkpoint's size and mtime and by the images' sizes and mtimes, so a retrained fold or
a changed image is recomputed and nothing else. One PNG per image name (its stem and a
digest of the whole name: `a.jpg` and `a.png` never share a file), always inside the
cache folder; `index.json` is checked for shape when read back.

What changed since the retrain is named, not met as a `KeyError`: an annotation file
whose image list differs from the retrain's manifest (`folds.json`) is refused, one whose
words changed is said; a finished fold whose checkpoint is gone is refused by `predict`
and said by `tune-postprocess`, never left out silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UserError
from ..files import child_path, mapping
from ..files import field as doc_field

log = logging.getLogger(__name__)

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

    def finished_folds(
        self, folds: Sequence[int] | None = None, *, missing: str = "refuse"
    ) -> list[tuple[int, Path, float | None]]:
        """(fold, best checkpoint, best score) of each finished fold (or of `folds`).

        A finished fold whose best checkpoint is gone is never left out silently: with
        `missing="refuse"` (prediction) it is a `UserError` naming the fold and the file;
        with `missing="note"` (tuning) it is left out and said in `notes` and the log.
        """
        out, gone = [], []
        for k, f in sorted(self.summary.get("folds", {}).items(), key=lambda kv: int(kv[0])):
            k = int(k)
            if folds is not None and k not in folds:
                continue
            ckpt = f.get("best_ckpt")
            if f.get("state") == "finished" and ckpt and not Path(ckpt).is_file():
                gone.append((k, ckpt))
                continue
            if f.get("state") != "finished" or not ckpt:
                if folds is not None:
                    raise UserError(
                        f"fold {k} of {self.root} is {f.get('state')} without a best checkpoint; "
                        f"finish it with: hrnet_sweep kfold {self.preset}"
                    )
                continue
            out.append((k, Path(ckpt), f.get("best")))
        if gone:
            listed = ", ".join(f"fold {k} ({c})" for k, c in gone)
            if missing == "refuse" or folds is not None:
                keep = ",".join(str(k) for k, _, _ in out)
                raise UserError(
                    f"{self.summary_path}: finished fold(s) whose best checkpoint is gone: {listed}; restore it, "
                    f"or leave the fold out by name" + (f" (--folds {keep})" if keep else "")
                )
            note = f"left out: finished {listed}, whose best checkpoint is gone"
            self.notes.append(note)
            log.warning("%s: %s", self.root, note)
        if folds is not None:
            found = {k for k, _, _ in out}
            missing_folds = sorted(set(folds) - found)
            if missing_folds:
                raise UserError(f"folds {missing_folds} are not in {self.summary_path}")
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
    from .retrain import read_summary

    for c in candidates:
        if c.is_file() and read_summary(c)["preset"] == ref:  # a damaged summary is named, not skipped
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


def _images_stamp(image_dir: Path, names: Sequence[str]) -> str:
    """A digest of the fold's images (names, sizes, mtimes): a changed image recomputes its fold."""
    digest = hashlib.sha256()
    for n in sorted(names):
        try:
            st = (image_dir / n).stat()
            digest.update(f"{n}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{n}\0missing\n".encode())
    return digest.hexdigest()[:16]


def map_file(fold: int, name: str) -> str:
    """The cache file of one image's map: its stem (made safe) and a digest of the whole
    name, so two images (`a.jpg`, `a.png`, `x/a.jpg`) never share one file."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:80] or "image"
    return f"fold{fold}/{stem}-{hashlib.sha256(name.encode()).hexdigest()[:10]}.png"


def _save_png(path: Path, prob: np.ndarray) -> None:
    import cv2

    from ..files import atomic_path

    ok, buf = cv2.imencode(".png", prob, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise UserError(f"cannot encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def read_index(path: Path, folder: Path) -> dict:
    """The cache's `index.json`, its shape checked (a `DataError` naming the file and the
    key, with how to rebuild it); every map file it names lies inside `folder`."""
    from ..files import read_json

    try:
        doc = mapping(read_json(path), path)
        for key, kind in (("version", int), ("tta_flip", bool)):
            doc_field(doc, key, kind, path, optional=True)
        folds = doc_field(doc, "folds", dict, path, optional=True) or {}
        for k, e in folds.items():
            mapping(e, path, f"folds.{k}")
            doc_field(e, "stamp", list, path, optional=True, prefix=f"folds.{k}.")
            doc_field(e, "images_stamp", str, path, optional=True, prefix=f"folds.{k}.")
        images = doc_field(doc, "images", dict, path, optional=True) or {}
        for name, e in images.items():
            mapping(e, path, f"images.{name}")
            doc_field(e, "fold", int, path, prefix=f"images.{name}.")
            child_path(
                folder, doc_field(e, "file", str, path, prefix=f"images.{name}."), what=f"{path}: images.{name}.file"
            )
            size = doc_field(e, "size", list, path, prefix=f"images.{name}.")
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
                raise DataError(f"{path}: key images.{name}.size is {size!r}, not [height, width]")
    except DataError as err:
        raise DataError(f"{err} (a cache: delete {folder} to rebuild it)") from None
    return doc


def _check_annotations(target: Retrain, manifest, train_json: Path, ann) -> None:
    """The retrain's manifest against today's annotation file: other images are refused,
    naming the file and the images; the same images with other words are said."""
    from ..folds import sha256_file
    from ..runfolder import MANIFEST_FILE

    sha = sha256_file(train_json)
    if sha == manifest.sha256:
        return
    now, then = set(ann), set(manifest.assignment)
    if now != then:
        gone, new = sorted(then - now), sorted(now - then)
        parts = [
            f"{len(gone)} image(s) gone (e.g. {gone[0]!r})" if gone else "",
            f"{len(new)} new (e.g. {new[0]!r})" if new else "",
        ]
        raise UserError(
            f"{train_json} changed since the retrain ({target.root / MANIFEST_FILE}: sha256 {manifest.sha256[:12]}, "
            f"now {sha[:12]}): {', '.join(p for p in parts if p)}; its folds no longer cover these images: restore "
            "the file, or retrain into another folder"
        )
    msg = (
        f"{train_json} changed since the retrain (sha256 {manifest.sha256[:12]}, now {sha[:12]}), same images: "
        "the out-of-fold maps are scored against today's words"
    )
    target.notes.append(msg)
    log.warning("%s", msg)


def cache_oof_maps(
    target: Retrain, *, device: str | None = None, tta_flip: bool = False, progress: bool = True
) -> OOFCache:
    """Each finished fold's best checkpoint on its own validation images, cached once."""
    from ..dbnet.inference import load_checkpoint, pick_device, probability_maps
    from ..dbnet.postprocess import to_uint8
    from ..files import atomic_write_json
    from ..folds import read_manifest
    from ..formats import clamp_polygon, load_annotations
    from ..runfolder import MANIFEST_FILE

    cfg = target.cfg
    folder = target.root / OOF_DIR
    index_path = folder / OOF_INDEX
    index = read_index(index_path, folder) if index_path.is_file() else {}
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
    _check_annotations(target, manifest, train_json, ann)
    image_dir = cfg.data.resolved_root() / cfg.data.train_images
    dev = pick_device(device)
    folds = target.finished_folds(missing="note")
    for k, ckpt, _ in folds:
        names = manifest.fold_names(k)
        entry = index["folds"].get(str(k))
        images_stamp = _images_stamp(image_dir, names)
        cached = (
            entry
            and entry.get("stamp") == _stamp(ckpt)
            and all((folder / index["images"].get(n, {}).get("file", "-")).is_file() for n in names)
        )
        if cached and entry.get("images_stamp") not in (None, images_stamp):
            print(f"out-of-fold maps: fold {k}: images in {image_dir} changed since they were cached", flush=True)
            cached = False
        if cached:
            continue
        print(f"out-of-fold maps: fold {k}, {len(names)} images, {ckpt.name}", flush=True)
        model = load_checkpoint(ckpt, dev)
        for name, pm in probability_maps([model], image_dir, names, tta_flip=tta_flip, device=dev, progress=progress):
            rel = map_file(k, name)
            _save_png(child_path(folder, rel, what="image name"), to_uint8(pm.prob))
            index["images"][name] = {"fold": k, "size": list(pm.image_size), "file": rel}
        index["folds"][str(k)] = {
            "ckpt": str(ckpt),
            "stamp": _stamp(ckpt),
            "images": len(names),
            "images_stamp": images_stamp,
        }
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
