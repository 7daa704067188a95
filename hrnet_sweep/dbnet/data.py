"""Images in, network inputs and DBNet targets out.

- `read_image`: any JPEG/PNG as RGB uint8, EXIF orientation applied.
- `build_transforms`: the letterbox (resize the longest side, pad bottom/right) plus, for
  training, the augmentations of `data.augment`; uint8 in, uint8 out. Word polygons
  travel through albumentations as keypoints, so they stay aligned with the pixels.
- `DetectionDataset`: a training/validation sample with the four target maps, computed
  here in the data workers (`targets.make_targets`), and the meta post-processing and
  the metric need. (Prediction reads images one at a time: `inference.probability_maps`.)
- `collate`: tensors stacked, meta kept as lists. Batches stay compact (uint8 image and
  masks) until `to_network_input` normalises them on the training device.

Failure policy. A missing image, one that is not a regular file (a directory; a FIFO,
whose opening would block the training forever), or one whose header cannot be read,
fails at dataset construction with every bad name listed, so a training fails before
epoch 1. An image whose content turns out unreadable later (a truncated JPEG) is logged
as a warning naming the file (once per file and worker) and the next readable sample is
returned in its place: an epoch never dies at step 3,000 for one broken file, and the
log says which file was skipped. `DetectionDataset.bad_files` lists them. Prediction never
substitutes: every test image needs its own row, so there it is a `DataError`.

Words of zero area (points on a line) stay in the ground truth of a sample, which the
metric scores as the competition does, and are left out of the target maps: they have
no inside to learn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import default_collate

from ..config import AugmentConfig, TargetsConfig
from ..errors import ConfigError, DataError
from ..files import check_readable_file
from ..formats import ImageAnnotation, clamp_polygon

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAP_KEYS",
    "DetectionDataset",
    "Pipeline",
    "build_transforms",
    "collate",
    "letterbox_size",
    "read_image",
    "to_network_input",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Augmentation strengths that are not knobs of `data.augment` (only their probabilities are).
_TRANSLATE = 0.05  # fraction of the image side
_BRIGHTNESS_CONTRAST = 0.2
_COLOR = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)
_FULL_COLOR_SHARE = 0.2  # of colour draws; hue/saturation cost 20+ ms at 1280 px, receipts are mostly grey
_NOISE_STD = (0.02, 0.06)  # fraction of 255
_BLUR_KERNEL = (3, 5)
_MIN_VISIBLE = 0.5  # a word less than half inside the input after augmentation is ignored
MAP_KEYS = ("prob_map", "prob_mask", "thresh_map", "thresh_mask")  # the target maps of a sample
_TARGETS = TargetsConfig()  # defaults of the target parameters, defined once in config.py

# ----------------------------------------------------------------------------- images


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit PNG: keep the top 8 bits
        arr = np.asarray(im).astype(np.float32) / 257.0
        return np.repeat(np.clip(arr + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        return np.repeat(np.clip(np.asarray(im), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels of a scan are paper: composite on white, not on black.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) RGB uint8 with its EXIF orientation applied.

    Grayscale, palette, RGBA (composited on white) and 16-bit PNGs are converted.
    A missing, unidentifiable or truncated file, or one that is not a regular file,
    raises `DataError` naming the file.
    """
    path = check_readable_file(path, "image file")
    try:
        with Image.open(path) as im:
            im.load()
            upright = ImageOps.exif_transpose(im) or im
            return np.ascontiguousarray(_to_rgb(upright))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def _check_files(image_dir: Path, names: Sequence[str]) -> None:
    """Fail before training starts when an image is missing, not a regular file or not
    an image at all."""
    bad = []
    for name in names:
        path = image_dir / name
        try:
            check_readable_file(path, "image file")
            with Image.open(path):  # reads the header only
                pass
        except DataError as err:
            bad.append(str(err))
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            bad.append(f"{path} ({type(err).__name__}: {err})")
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(f"{len(bad)} of {len(names)} images unusable: " + "; ".join(bad[:10]) + more)


# ----------------------------------------------------------------------------- transforms


def letterbox_size(height0: int, width0: int, height: int, width: int) -> tuple[float, tuple[int, int]]:
    """Scale and (h, w) of an `height0 x width0` image fitted into `height x width`.

    The same arithmetic as albumentations' `LongestMaxSize(max_size_hw=...)`, so
    post-processing can map predictions back to original pixels.
    """
    scale = min(height / height0, width / width0)
    return scale, (max(1, round(height0 * scale)), max(1, round(width0 * scale)))


def to_network_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(N, H, W, 3) RGB uint8 -> (N, 3, H, W) float32 with ImageNet mean/std, on the
    tensor's own device.

    Batches travel as uint8 and are normalised here, after the transfer (Lightning's
    `on_after_batch_transfer`, and prediction): a quarter of the bytes to collate, pin and
    copy, and no per-pixel float work in the data workers. The permuted NHWC batch is
    already channels_last in memory, so that layout costs no copy.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected an (N, H, W, 3) uint8 batch, got {tuple(images.shape)} {images.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).mul_(255.0).view(1, 3, 1, 1)
    inv_std = torch.tensor(IMAGENET_STD, device=images.device).mul_(255.0).reciprocal_().view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float().sub_(mean).mul_(inv_std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class Pipeline:
    """An albumentations pipeline that carries polygons as keypoints.

    Call it with an RGB uint8 image and a list of (K, 2) polygons; get back the
    letterboxed, augmented (H, W, 3) uint8 input and the polygons in input coordinates
    (possibly outside it after augmentation; the caller decides what to do with those).
    Normalisation happens on the batch, on its device: `to_network_input`.
    """

    def __init__(self, transforms: list, height: int, width: int, train: bool):
        self.height, self.width, self.train = height, width, train
        # remove_invisible=False: a polygon corner rotated out of the image is still a
        # corner; dropping it would silently change the polygon.
        self.compose = A.Compose(
            transforms, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False, check_each_transform=True)
        )
        self._seeded_pid: int | None = None

    def _reseed_per_process(self) -> None:
        # A Compose carries its own RNG. DataLoader workers fork it, so without this every
        # worker, and every epoch of non-persistent workers, replays the same
        # augmentations. torch.initial_seed() differs per worker and epoch and follows
        # the training seed, so runs stay reproducible.
        if self._seeded_pid != os.getpid():
            self.compose.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_pid = os.getpid()

    def __call__(self, image: np.ndarray, polygons: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        if self.train:
            self._reseed_per_process()
        lengths = [len(p) for p in polygons]
        points = np.concatenate(polygons).astype(np.float32) if polygons else np.zeros((0, 2), np.float32)
        out = self.compose(image=image, keypoints=points)
        if not polygons:
            return out["image"], []
        moved = np.asarray(out["keypoints"], dtype=np.float32).reshape(len(points), -1)[:, :2]
        return out["image"], np.split(moved, np.cumsum(lengths)[:-1])


class _GrayNoise(A.ImageOnlyTransform):
    """Additive Gaussian noise, one plane shared by the channels (scanner-like).

    ~3x cheaper than `A.GaussNoise(per_channel=False)` at 1280 px: OpenCV draws int16
    noise and adds it with saturation. Seeded from the Compose RNG, so reproducible.
    """

    def __init__(self, std_range: tuple[float, float] = (0.02, 0.06), p: float = 0.5):
        super().__init__(p=p)
        self.std_range = tuple(std_range)

    def get_params(self) -> dict[str, Any]:
        return {"std": 255.0 * self.py_random.uniform(*self.std_range), "seed": self.py_random.randrange(2**31)}

    def apply(self, img: np.ndarray, std: float, seed: int, **params: Any) -> np.ndarray:
        noise = np.empty(img.shape[:2], np.int16)
        cv2.setRNGSeed(seed)
        cv2.randn(noise, 0, std)
        if img.ndim == 3:
            noise = cv2.merge([noise] * img.shape[2])
        return cv2.add(img, noise, dtype=cv2.CV_8U)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("std_range",)


def _augment_config(cfg_aug: AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig:
    if cfg_aug is None:
        return AugmentConfig()
    if isinstance(cfg_aug, AugmentConfig):
        return cfg_aug
    if isinstance(cfg_aug, Mapping):
        from pydantic import ValidationError

        try:
            return AugmentConfig(**cfg_aug)
        except ValidationError as err:
            first = err.errors()[0]
            key = "data.augment." + ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{key}={first.get('input')!r}: {first['msg']}") from None
    raise ConfigError(f"data.augment: expected a mapping, got {type(cfg_aug).__name__}")


def build_transforms(
    cfg_aug: AugmentConfig | Mapping[str, Any] | None, height: int, width: int, train: bool
) -> Pipeline:
    """Letterbox to `height x width` (content top-left, padding bottom/right, zeros before
    ImageNet normalisation); with `train=True` also the augmentations of `cfg_aug`:
    horizontal flip (`hflip`, default off), rotation by up to `rotate` degrees
    (`rotate_p`), scale `scale` plus a 5% shift (`affine_p`), brightness/contrast or full
    colour jitter (`color_p`), Gaussian noise (`noise_p`), Gaussian or motion blur (`blur_p`).

    Geometry and colour run on the resized content before padding: cheaper, and a
    rotation turns the receipt about its own centre, not about the canvas centre.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"data.image_height={height}, data.image_width={width}: must be positive")
    steps: list = [A.LongestMaxSize(max_size_hw=(height, width), area_for_downscale="image", p=1.0)]
    if train:
        aug = _augment_config(cfg_aug)
        border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0)
        optional = [
            (aug.hflip, lambda p: A.HorizontalFlip(p=p)),
            (
                aug.rotate_p if aug.rotate > 0 else 0.0,
                lambda p: A.Rotate(limit=(-aug.rotate, aug.rotate), **border, p=p),
            ),
            (
                aug.affine_p,
                lambda p: A.Affine(
                    scale=tuple(aug.scale), translate_percent=(-_TRANSLATE, _TRANSLATE), keep_ratio=True, **border, p=p
                ),
            ),
            (
                aug.color_p,
                lambda p: A.OneOf(
                    [
                        A.RandomBrightnessContrast(_BRIGHTNESS_CONTRAST, _BRIGHTNESS_CONTRAST, p=1 - _FULL_COLOR_SHARE),
                        A.ColorJitter(**_COLOR, p=_FULL_COLOR_SHARE),
                    ],
                    p=p,
                ),
            ),
            (aug.noise_p, lambda p: _GrayNoise(std_range=_NOISE_STD, p=p)),
            (
                aug.blur_p,
                lambda p: A.OneOf(
                    [A.GaussianBlur(blur_limit=_BLUR_KERNEL), A.MotionBlur(blur_limit=_BLUR_KERNEL)], p=p
                ),
            ),
        ]
        steps += [make(p) for p, make in optional if p > 0]  # a p=0 step only costs time
    steps.append(
        A.PadIfNeeded(min_height=height, min_width=width, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0)
    )
    return Pipeline(steps, height, width, train)


def _fit_polygons(polygons: Sequence[np.ndarray], width: int, height: int) -> tuple[list[np.ndarray], list[bool]]:
    """Clamp augmented polygons into the input; mark as ignored the ones that are now
    mostly outside it or degenerate. Non-finite ones are dropped (nothing to mask)."""
    kept, ignore = [], []
    for poly in polygons:
        if len(poly) < 3 or not np.isfinite(poly).all():
            continue
        inside = clamp_polygon(poly, width, height)
        area, area_inside = abs(cv2.contourArea(poly)), abs(cv2.contourArea(inside))
        kept.append(inside)
        ignore.append(bool(area_inside < 1.0 or area_inside < _MIN_VISIBLE * area))
    return kept, ignore


# ----------------------------------------------------------------------------- datasets


class DetectionDataset(torch.utils.data.Dataset):
    """Training / validation samples: input image, the four DBNet target maps and meta.

    A sample is a dict: `image` (H, W, 3) uint8 RGB, letterboxed and augmented but not
    normalised (`to_network_input` does that on the batch); `prob_map`, `prob_mask`,
    `thresh_mask` (H, W) uint8 0/1 and `thresh_map` (H, W) float32; `name`; `image_size` (H0, W0) of the
    image after EXIF; `content_size` (h, w) of the letterboxed image inside the input
    (before any augmentation: what post-processing needs at validation); `polygons`,
    the ground truth in original pixels clamped to the image, for the metric (every
    word, zero-area ones included). Words of zero area are left out of the targets;
    words that end up mostly outside the input or degenerate after augmentation are
    masked out of the loss (`ignore`), never an error.

    Args:
        image_dir: folder of the images named in `annotations`.
        annotations: `{name: ImageAnnotation}` from `formats.load_annotations`.
        names: the images of this split (e.g. from `folds.split`).
        transforms: a `Pipeline` from `build_transforms`.
        shrink_ratio, thresh_min, thresh_max, min_text_size: passed to `targets.make_targets`.
        check_files: open every image header now, so a bad file fails before epoch 1.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotations: Mapping[str, ImageAnnotation],
        names: Sequence[str],
        transforms: Pipeline,
        *,
        shrink_ratio: float = _TARGETS.shrink_ratio,
        thresh_min: float = _TARGETS.thresh_min,
        thresh_max: float = _TARGETS.thresh_max,
        min_text_size: int = _TARGETS.min_text_size,
        check_files: bool = True,
    ):
        self.image_dir = Path(image_dir)
        unknown = [n for n in names if n not in annotations]
        if unknown:
            raise DataError(f"{len(unknown)} images have no annotation, e.g. {unknown[:3]}")
        if not names:
            raise DataError(f"{self.image_dir}: no images in this split")
        self.names = list(names)
        self.annotations = annotations
        self.transforms = transforms
        self.target_params = dict(
            shrink_ratio=shrink_ratio, thresh_min=thresh_min, thresh_max=thresh_max, min_text_size=min_text_size
        )
        self.bad_files: set[str] = set()
        self._size_warned: set[str] = set()
        if check_files:
            _check_files(self.image_dir, self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for step in range(len(self.names)):
            name = self.names[(index + step) % len(self.names)]
            try:
                image = read_image(self.image_dir / name)
            except DataError as err:
                if name not in self.bad_files:
                    self.bad_files.add(name)
                    log.warning("%s; using the next readable image instead", err)
                continue
            return self._sample(name, image)
        raise DataError(f"{self.image_dir}: none of the {len(self.names)} images can be read")

    def _sample(self, name: str, image: np.ndarray) -> dict[str, Any]:
        from .targets import make_targets  # imported here: workers build targets, not the main process

        h0, w0 = image.shape[:2]
        ann = self.annotations[name]
        if ann.width and ann.height and (ann.width, ann.height) != (w0, h0) and name not in self._size_warned:
            # Most often an EXIF rotation the annotator did not see: the polygons may be off.
            self._size_warned.add(name)
            log.warning(
                "%s: annotation says img_w=%d img_h=%d, the image is %dx%d after EXIF orientation",
                self.image_dir / name,
                ann.width,
                ann.height,
                w0,
                h0,
            )
        original = [clamp_polygon(p, w0, h0) for p in ann.polygons()]
        drawn = [p for p, word in zip(original, ann.words) if word.has_area]
        inp, moved = self.transforms(image, drawn)
        height, width = inp.shape[:2]
        polygons, ignore = _fit_polygons(moved, width, height)
        maps = make_targets(polygons, height, width, ignore=ignore, compact=True, **self.target_params)
        sample = {key: torch.from_numpy(maps[key]) for key in MAP_KEYS}
        sample.update(
            image=torch.from_numpy(inp),
            name=name,
            image_size=(h0, w0),
            content_size=letterbox_size(h0, w0, self.transforms.height, self.transforms.width)[1],
            polygons=original,
        )
        return sample


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dimension; everything else becomes a list.

    Tensors go through `default_collate`, which in a DataLoader worker stacks straight
    into shared memory (one copy of the batch instead of two).
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    return {
        key: default_collate([s[key] for s in batch])
        if isinstance(batch[0][key], torch.Tensor)
        else [s[key] for s in batch]
        for key in batch[0]
    }
