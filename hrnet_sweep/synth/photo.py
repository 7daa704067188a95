"""Photographing the receipt: one homography (rotation, perspective, scale, placement)
takes the paper onto a table and its word boxes into the image; then light, shadow, blur
and noise, which move no pixel, so the polygons stay exact."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from .fonts import FontSet
from .receipt import print_receipt, smooth_field

PAD = 1
"""Pixels added around the ink box of each word: annotators leave a little room."""


@dataclass
class SynthImage:
    """One rendered receipt photo (before JPEG) and its annotation."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    polygons: list[np.ndarray]  # (4, 2) float32 quads, clockwise from top-left, image pixels
    paper: np.ndarray  # (4, 2) float32 outline of the receipt paper in the image
    korean: bool
    jpeg_quality: int


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Fixed Gaussian noise to crop from: drawing fresh normals for every image costs more
    than the rest of its photometric damage together."""
    return np.random.default_rng(20240601).standard_normal((1024, 1024), dtype=np.float32)


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    bank = _noise_bank()
    if height > bank.shape[0] or width > bank.shape[1]:
        return rng.standard_normal((height, width), dtype=np.float32)
    y, x = int(rng.integers(bank.shape[0] - height + 1)), int(rng.integers(bank.shape[1] - width + 1))
    return bank[y : y + height, x : x + width]


def homography(rng, wr: int, hr: int, width: int, height: int) -> np.ndarray:
    """Receipt -> canvas: small rotation, perspective jitter of the corners, scale to fit,
    random placement with the whole paper in view. Edge coordinates on both sides (pixel
    i spans [i, i + 1)), so a point on an ink edge maps to the same edge in the photo."""
    src = np.array([[0, 0], [wr, 0], [wr, hr], [0, hr]], np.float64)
    angle = np.deg2rad(np.clip(rng.normal(0, 2.5), -7, 7))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src - [wr / 2, hr / 2]) @ rot.T + rng.uniform(-0.035, 0.035, (4, 2)) * wr
    lo, hi = dst.min(0), dst.max(0)
    dst *= min(1.0, 0.97 * width / (hi[0] - lo[0]), 0.97 * height / (hi[1] - lo[1])) * rng.uniform(0.92, 1.0)
    lo, hi = dst.min(0), dst.max(0)
    dst += [rng.uniform(2 - lo[0], width - 2 - hi[0]), rng.uniform(2 - lo[1], height - 2 - hi[1])]
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def on_table(rng, rgb: np.ndarray, H: np.ndarray, width: int, height: int, cast: np.ndarray) -> np.ndarray:
    """Warp the (3, h, w) receipt through `H` onto a table with a soft drop shadow."""
    # warpPerspective works in pixel-centre coordinates: conjugate by a half-pixel shift.
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    M = np.linalg.inv(half) @ H @ half

    def warp(plane: np.ndarray) -> np.ndarray:  # zero outside the paper: premultiplied
        return cv2.warpPerspective(plane, M, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)

    mask = warp(np.ones(rgb.shape[1:], np.float32))
    palette = np.array([[128, 90, 60], [45, 45, 50], [150, 150, 148], [60, 80, 115], [205, 200, 190], [95, 120, 90]])
    colour = (palette[int(rng.integers(len(palette)))] + rng.uniform(-25, 25, 3)) * cast
    table = smooth_field(rng, (height, width), 4) * np.float32(rng.uniform(10, 35))
    shadow = cv2.GaussianBlur(mask, (0, 0), rng.uniform(2, 6))
    dx, dy = (int(v) for v in rng.integers(1, 6, 2))
    visible = 1 - mask  # how much of the table shows
    visible[dy:, dx:] *= 1 - np.float32(rng.uniform(0.2, 0.45)) * shadow[: height - dy, : width - dx]
    img = (colour.astype(np.float32)[:, None, None] + table) * visible
    for c in range(3):
        img[c] += warp(rgb[c])
    return img


def photo_damage(rng, img: np.ndarray) -> np.ndarray:
    """Illumination gradient, a cast shadow, blur and sensor noise on a (3, H, W) float32
    image. Returns (H, W, 3) uint8."""
    height, width = img.shape[1:]
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    phi, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.15)
    light = 1 + (xx * np.float32(amp * np.cos(phi)) + yy * np.float32(amp * np.sin(phi)))
    if rng.random() < 0.35:  # a soft-edged shadow across part of the photo
        phi2, off = rng.uniform(0, 2 * np.pi), rng.uniform(-0.6, 0.6)
        sharp = min(width, height) / rng.uniform(3, 25)
        d = xx * np.float32(np.cos(phi2) * sharp) + yy * np.float32(np.sin(phi2) * sharp) - np.float32(off * sharp)
        light = light * (1 - np.float32(rng.uniform(0.2, 0.45)) / (1 + np.exp(-np.clip(d, -30, 30))))
    img *= light
    if rng.random() < 0.6:
        sigma = rng.uniform(0.3, 1.0)
        for c in range(3):
            img[c] = cv2.GaussianBlur(img[c], (0, 0), sigma)
    grain = np.float32(0.5)  # + 0.5: round half up in the cast to uint8
    if rng.random() < 0.8:
        grain = _noise(rng, height, width) * np.float32(rng.uniform(1, 6)) + grain
    img += grain
    return cv2.merge(list(np.clip(img, 0, 255, out=img).astype(np.uint8)))


def render_image(
    rng: np.random.Generator, width: int, height: int, fonts: FontSet, allow_korean: bool, text_scale: float = 1.0
) -> SynthImage:
    """One receipt photo. Draws from `rng` in a fixed order: the same rng, the same image."""
    cast = (1 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)  # colour of the light
    rgb, boxes, korean = print_receipt(rng, width, height, fonts, allow_korean, cast, text_scale)
    hr, wr = rgb.shape[1:]
    H = homography(rng, wr, hr, width, height)
    image = photo_damage(rng, on_table(rng, rgb, H, width, height, cast))

    quads = np.array([[[x0 - PAD, y0 - PAD], [x1 + PAD, y0 - PAD], [x1 + PAD, y1 + PAD], [x0 - PAD, y1 + PAD]]
                      for x0, y0, x1, y1 in boxes], np.float64).reshape(-1, 4, 2)  # fmt: skip
    quads[..., 0] = quads[..., 0].clip(0, wr)  # the padding stays on the paper...
    quads[..., 1] = quads[..., 1].clip(0, hr)
    polys = cv2.perspectiveTransform(quads, H) if len(quads) else quads
    polys[..., 0] = polys[..., 0].clip(0, width - 1)  # ...and in the image
    polys[..., 1] = polys[..., 1].clip(0, height - 1)
    corners = np.array([[[0, 0], [wr, 0], [wr, hr], [0, hr]]], np.float64)
    return SynthImage(
        image=image,
        polygons=[p.astype(np.float32) for p in polys],
        paper=cv2.perspectiveTransform(corners, H)[0].astype(np.float32),
        korean=korean,
        jpeg_quality=int(rng.integers(55, 96)),
    )
