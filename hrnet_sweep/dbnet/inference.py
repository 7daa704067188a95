"""Inference: checkpoints -> probability maps (averaged over models, optionally with flip
TTA) -> one post-processing pass -> prediction JSON + CSV.

A map (`ProbMap`) is what validation post-processes: the content region of the network's
output at the network's resolution, with the original image's size; `postprocess_map`
reads it as uint8, as validation and the out-of-fold tuning do (`dbnet.postprocess`), so a
setting tuned on either gives the same polygons here. An ensemble averages its models'
maps in the first model's frame (models trained at another input size are resized to
it): probability maps average well, voting on boxes does not.

A checkpoint written with `models.postprocess.tune_on_val` holds the post-processing
chosen at its validation epoch (`dbnet.validation.CHECKPOINT_KEY`); `load_checkpoint`
puts it into the checkpoint's config, so predicting with that checkpoint uses it unless
the caller passes other settings (a retrain's preset, `predict --set`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, PostprocessConfig
from ..errors import CheckpointError, DataError, UserError
from ..formats import save_predictions, write_submission
from ..progress import track

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A network ready for inference, with the config it was trained with."""

    model: torch.nn.Module
    cfg: Config  # post-processing as tuned at validation, where the checkpoint holds it
    path: str
    tuned_postprocess: dict | None = None  # that setting and its validation H-Mean, as stored


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the DBNet of a training checkpoint (its config is stored inside), read and
    checked by `dbnet.checkpoint` (nothing in the file runs; a bad config, setting or
    weight is a `CheckpointError` naming the file and the key)."""
    from .checkpoint import Checkpoint, check_weights
    from .model import build_model
    from .validation import PARAMS

    ckpt = Checkpoint.read(path)
    cfg = ckpt.config()
    tuned = ckpt.tuned_postprocess()
    if tuned:
        cfg.models.postprocess = PostprocessConfig.model_validate(
            {**cfg.models.postprocess.model_dump(), **{k: tuned[k] for k in PARAMS}}
        )
        log.info(
            "%s: post-processing tuned at validation (H-Mean %.4f): %s",
            path,
            tuned.get("hmean", float("nan")),
            {k: tuned[k] for k in PARAMS},
        )
    model = build_model(cfg)
    state = ckpt.model_state()
    extra = check_weights(state, model, ckpt.path, describe=f" (models.name={cfg.models.name})")
    if extra:
        raise CheckpointError(
            f"{ckpt.path}: {len(extra)} weights the model (models.name={cfg.models.name}) does not have, "
            f"e.g. {extra[0]}: the checkpoint's config does not describe its weights"
        )
    model.load_state_dict(state)
    model.eval().to(device)
    return LoadedModel(model, cfg, str(path), tuned)


@dataclass(frozen=True)
class ProbMap:
    """A probability map of one image: float32 0..1 over the content region of the
    letterboxed network output (padding cut off), and the original image's (h, w)."""

    prob: np.ndarray
    image_size: tuple[int, int]


@torch.no_grad()
def _model_prob(lm: LoadedModel, image: np.ndarray, tf, device, tta_flip: bool) -> np.ndarray:
    """One model's probability map of one image: the content region at network resolution."""
    from .data import letterbox_size, to_network_input

    h0, w0 = image.shape[:2]
    inp, _ = tf(image, [])
    x = to_network_input(torch.from_numpy(inp)[None].to(device))
    _, content = letterbox_size(h0, w0, tf.height, tf.width)
    probs = [lm.model.predict_prob(x)[0].cpu().numpy()]
    if tta_flip:
        # Flip only the content region so the padding stays bottom/right, then flip back.
        ch, cw = content
        xf = x.clone()
        xf[..., :ch, :cw] = torch.flip(x[..., :ch, :cw], dims=[-1])
        pf = lm.model.predict_prob(xf)[0].cpu().numpy()
        pf[:ch, :cw] = pf[:ch, :cw][:, ::-1]
        probs.append(pf)
    prob = np.mean(probs, axis=0) if len(probs) > 1 else probs[0]
    return prob[: content[0], : content[1]]


def average_maps(maps: Sequence[np.ndarray], image_size: tuple[int, int], weights: Sequence[float]) -> ProbMap:
    """The weighted mean of models' maps of one image in the first map's frame (a map of
    another size, from a model trained at another input size, is resized to it)."""
    import cv2

    h, w = maps[0].shape
    acc = np.zeros((h, w), np.float64)
    for m, wi in zip(maps, weights):
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        acc += wi * m
    return ProbMap(acc.astype(np.float32), image_size)


def normalized_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Ensemble weights summing to 1 (equal when None) for `n` models (at least one)."""
    if n < 1:
        raise UserError("no checkpoints given")
    w = np.asarray(weights if weights is not None else [1.0] * n, dtype=np.float64)
    with np.errstate(over="ignore"):
        total = w.sum() if len(w) else 0.0
    if len(w) != n or not np.isfinite(w).all() or (w < 0).any() or not 0 < total < np.inf:
        shown = " ".join(f"{x:g}" for x in w)
        why = "their sum is infinite" if np.isfinite(w).all() and total == np.inf else "need a positive, finite sum"
        raise UserError(f"--weights {shown}: need {n} weight(s), one per checkpoint / fold, >= 0 and finite; {why}")
    return w / total


def model_maps(
    models: Sequence[LoadedModel],
    image_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    tta_flip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Iterator[tuple[str, tuple[int, int], list[np.ndarray]]]:
    """Per image: (name, original (h, w), each model's map in its own frame), each image
    read once."""
    from .data import IMAGE_EXTENSIONS, build_transforms, read_image

    if not models:
        raise UserError("no checkpoints given")
    image_dir = Path(image_dir)
    if names is None:
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: not a folder")
        names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not names:
            raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    tfs = [build_transforms(None, m.cfg.data.image_height, m.cfg.data.image_width, train=False) for m in models]
    for name in track(names, desc="predict", unit="img", enabled=progress):
        image = read_image(image_dir / name)
        size = (int(image.shape[0]), int(image.shape[1]))
        yield name, size, [_model_prob(lm, image, tf, device, tta_flip) for lm, tf in zip(models, tfs)]


def probability_maps(
    models: Sequence[LoadedModel],
    image_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    weights: Sequence[float] | None = None,
    tta_flip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Iterator[tuple[str, ProbMap]]:
    """Yield `(image name, the models' (weighted) average map)` (see `average_maps`)."""
    w = normalized_weights(weights, len(models))
    for name, size, maps in model_maps(models, image_dir, names, tta_flip=tta_flip, device=device, progress=progress):
        yield name, average_maps(maps, size, w)


def postprocess_map(pm: ProbMap, pp: PostprocessConfig) -> tuple[list[np.ndarray], list[float]]:
    """Post-process a map as validation does: read as uint8, polygons in original pixels."""
    from .postprocess import detect, to_uint8

    return detect(to_uint8(pm.prob), pp, image_size=pm.image_size)


def predict(
    checkpoints: Sequence[str | Path],
    image_dir: str | Path,
    *,
    out_csv: str | Path | None = None,
    out_json: str | Path | None = None,
    postprocess: PostprocessConfig | None = None,
    weights: Sequence[float] | None = None,
    tta_flip: bool = False,
    device: str | None = None,
    overwrite: bool = True,
    progress: bool = True,
) -> dict[str, list[tuple[np.ndarray, float]]]:
    """Run the (ensemble) prediction and write the JSON and CSV atomically.

    Post-processing parameters default to those of the first checkpoint (tuned at its
    validation epoch where it holds them, else its config's).
    """
    dev = pick_device(device)
    models = [load_checkpoint(c, dev) for c in checkpoints]
    pp = postprocess or models[0].cfg.models.postprocess
    preds: dict[str, list[tuple[np.ndarray, float]]] = {}
    for name, prob in probability_maps(
        models, image_dir, weights=weights, tta_flip=tta_flip, device=dev, progress=progress
    ):
        polys, scores = postprocess_map(prob, pp)
        preds[name] = list(zip(polys, scores))
    if out_json:
        save_predictions(out_json, preds, overwrite=overwrite)
    if out_csv:
        write_submission(out_csv, {n: [p for p, _ in d] for n, d in preds.items()}, overwrite=overwrite)
    return preds
