"""Inference: checkpoints -> probability maps in original-image coordinates (averaged over
models, optionally with flip TTA) -> one post-processing pass -> prediction JSON + CSV.

Averaging in original-image coordinates lets models of different backbones and input
sizes form one ensemble: probability maps average well, voting on boxes does not.

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
from ..errors import DataError, UserError
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
    """Rebuild the DBNet of a training checkpoint (its config is stored inside)."""
    from .model import build_model
    from .validation import CHECKPOINT_KEY, PARAMS

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    try:
        cfg_dict = ckpt["hyper_parameters"]["config"]
    except (KeyError, TypeError):
        raise DataError(f"{path}: no hrnet_sweep config inside; was it written by hrnet_sweep train?") from None
    cfg = Config.model_validate({**cfg_dict, "models": {**cfg_dict["models"], "pretrained": False}})
    tuned = ckpt.get(CHECKPOINT_KEY)
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
    state = {
        k.removeprefix("model.").removeprefix("_orig_mod."): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.")
    }
    model.load_state_dict(state)
    model.eval().to(device)
    return LoadedModel(model, cfg, str(path), dict(tuned) if tuned else None)


@torch.no_grad()
def _model_prob(lm: LoadedModel, image: np.ndarray, tf, device, tta_flip: bool) -> np.ndarray:
    """One model's probability map of one image, in original-image pixels."""
    from .data import letterbox_size, to_network_input
    from .postprocess import resize_prob_to_image

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
    return resize_prob_to_image(prob, content, (h0, w0))


def probability_maps(
    models: Sequence[LoadedModel],
    image_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    weights: Sequence[float] | None = None,
    tta_flip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(image name, averaged float32 probability map at original image size)`."""
    from .data import IMAGE_EXTENSIONS, build_transforms, read_image

    if not models:
        raise UserError("no checkpoints given")
    w = np.asarray(weights if weights is not None else [1.0] * len(models), dtype=np.float64)
    if len(w) != len(models) or (w < 0).any() or w.sum() <= 0:
        raise UserError(f"--weights {list(w)}: need {len(models)} non-negative weights with a positive sum")
    w = w / w.sum()
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
        acc = None
        for lm, tf, wi in zip(models, tfs, w):
            p = _model_prob(lm, image, tf, device, tta_flip) * wi
            acc = p if acc is None else acc + p
        yield name, acc.astype(np.float32)


def postprocess_map(prob: np.ndarray, pp: PostprocessConfig) -> tuple[list[np.ndarray], list[float]]:
    """Post-process a map that is already at original image size (`postprocess.detect`)."""
    from .postprocess import detect

    return detect(prob, pp)


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
