"""Printing a receipt: lay the lines out in pixels, render them word by word onto an ink
layer (each word's box is the exact extent of its own ink), and tint paper and ink."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .fonts import Font, FontSet
from .text import WORDS_PER_IMAGE, Line, receipt_lines

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in receipt pixels, x1/y1 exclusive


@dataclass
class Placed:
    """One thing to draw, in receipt pixels: a word, a rule or a barcode."""

    kind: str  # word | rule | barcode
    text: str = ""  # the word; for a rule its style: "-", "=", "solid", "dots"
    font: object = None
    x: int = 0  # word: its origin; others: left edge
    y: int = 0  # word: its baseline; others: centre line
    w: int = 0
    size: int = 0


@functools.lru_cache(maxsize=1 << 16)
def _text_width(font, text: str) -> float:
    return font.getlength(text)


def _fit_segments(line: Line, f, x_min: float, x_max: float) -> list[tuple[list[str], float]]:
    """Words and left x of each segment of a text line. Where two segments would touch,
    the one with more words loses its last word (a long item name, not the price); at a
    tie a middle column (unit price, quantity) goes before the name and the amount."""
    space = _text_width(f, " ")
    segs = [[s.text.split(), s] for s in line.segs]
    while True:
        spans = []
        for words, s in segs:
            w = sum(_text_width(f, t) for t in words) + space * (len(words) - 1)
            x0 = x_min + s.x * (x_max - x_min) - {"l": 0, "c": w / 2, "r": w}[s.align]
            x0 = max(x_min, min(x0, x_max - w))
            spans.append((x0, x0 + w))
        order = sorted(range(len(segs)), key=lambda i: spans[i][0])
        culprit = next((i for i in order if spans[i][1] - spans[i][0] > x_max - x_min), None)
        for i, j in zip(order, order[1:]):
            if culprit is None and spans[i][1] + space > spans[j][0]:
                rank = [(len(segs[n][0]), 0 < segs[n][1].x < 1) for n in (i, j)]
                culprit = i if rank[0] >= rank[1] else j
        if culprit is None:
            return [(words, x0) for (words, _), (x0, _) in zip(segs, spans)]
        segs[culprit][0] = segs[culprit][0][:-1]
        segs = [sw for sw in segs if sw[0]]


def layout(
    lines: list[Line], font: Font, base: int, width: int, margin: int, leading: float
) -> tuple[list[Placed], int]:
    """Place every line top to bottom at type size `base` (scaled per line); return the
    placed words and decorations and the receipt height."""
    placed: list[Placed] = []
    y = float(margin)
    usable = width - 2 * margin
    for line in lines:
        if line.kind == "rule":
            h = base * 0.9
            placed.append(Placed("rule", line.segs[0].text, font.get(base), margin, round(y + h / 2), usable, base))
            y += h
            continue
        if line.kind == "barcode":
            h = base * 2.6
            bars = Placed("barcode", x=margin + usable // 5, y=round(y + h / 2), w=usable * 3 // 5, size=round(h * 0.8))
            placed.append(bars)
            y += h
            continue
        size = max(8, round(base * line.scale))
        f = font.get(size, line.bold)
        ascent, descent = f.getmetrics()
        baseline = round(y + ascent)
        for words, x in _fit_segments(line, f, margin, width - margin):
            for t in words:
                placed.append(Placed("word", t, f, round(x), baseline, size=size))
                x += _text_width(f, t) + _text_width(f, " ")
        y += (ascent + descent) * leading
    return placed, round(y + margin)


def _paste_max(ink: np.ndarray, tile: np.ndarray, x0: int, y0: int) -> None:
    """ink = max(ink, tile) where the tile, placed at (x0, y0), overlaps the ink layer."""
    h, w = tile.shape
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, ink.shape[0]), min(x0 + w, ink.shape[1])
    if ya < yb and xa < xb:
        region = ink[ya:yb, xa:xb]
        np.maximum(region, tile[ya - y0 : yb - y0, xa - x0 : xb - x0], out=region)


def draw_word(ink: np.ndarray, p: Placed, strength: float) -> Box | None:
    """Render one word into the ink layer; return the exact box of its ink, or None when
    it has no ink or does not fit on the paper (then nothing is drawn)."""
    bb = p.font.getbbox(p.text, anchor="ls")  # a bound on the ink, not tight horizontally
    tile = Image.new("L", (bb[2] - bb[0] + 4, bb[3] - bb[1] + 4), 0)
    ImageDraw.Draw(tile).text((2 - bb[0], 2 - bb[1]), p.text, font=p.font, fill=255, anchor="ls")
    a = np.asarray(tile)
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    if not len(rows):
        return None
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    x0, y0 = p.x + bb[0] - 2 + int(cols[0]), p.y + bb[1] - 2 + int(rows[0])
    x1, y1 = x0 + a.shape[1], y0 + a.shape[0]
    if x0 < 0 or y0 < 0 or y1 > ink.shape[0] or x1 > ink.shape[1]:
        return None
    _paste_max(ink, (a * strength).astype(np.uint8), x0, y0)
    return x0, y0, x1, y1


def draw_decoration(ink: np.ndarray, p: Placed, rng: np.random.Generator) -> None:
    """Rules and barcodes: ink that is not a word, as on real receipts."""
    if p.kind == "barcode":
        x, top = p.x, p.y - p.size // 2
        while x < p.x + p.w:
            bar = int(rng.integers(1, 4))
            if rng.random() < 0.55:
                ink[top : top + p.size, x : x + bar] = 255
            x += bar
    elif p.text == "solid":
        ink[p.y : p.y + max(1, p.size // 12), p.x : p.x + p.w] = 255
    elif p.text == "dots":
        for x in range(p.x, p.x + p.w - 1, max(3, p.size // 4)):
            ink[p.y : p.y + 2, x : x + 2] = 255
    else:  # a row of '-' or '=' characters, as thermal printers draw them
        img = Image.new("L", (p.w, p.size * 2), 0)
        count = max(1, int(p.w / max(1.0, p.font.getlength(p.text))))
        ImageDraw.Draw(img).text((0, p.size), p.text * count, font=p.font, fill=255, anchor="lm")
        _paste_max(ink, np.asarray(img), p.x, p.y - p.size)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 5) -> np.ndarray:
    """Low-frequency noise in [-1, 1], float32: paper texture, fading, table colour."""
    small = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    # cubic to 1/8 size, then linear: as smooth, and ten times cheaper than cubic at full size
    mid = cv2.resize(small, (max(cells, shape[1] // 8), max(cells, shape[0] // 8)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(mid, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).clip(-1, 1)


def print_receipt(
    rng, width: int, height: int, fonts: FontSet, allow_korean: bool, cast: np.ndarray, text_scale: float = 1.0
):
    """Write, lay out and print one receipt that fits a `width` x `height` canvas.

    Returns the (3, h, w) float32 RGB paper, the ink box of every word, and whether the
    receipt is Korean. `cast` (3,) is the colour of the light, applied to paper and ink.
    `text_scale` multiplies the type size; where the words do not fit, items are dropped.
    """
    korean = bool(rng.random() < 0.5) and allow_korean
    pool = fonts.korean if korean else fonts.latin
    mono = [f for f in pool if f.mono]  # receipt printers favour monospaced type
    prefer_mono, k = rng.random() < 0.5, int(rng.integers(1 << 30))
    font = mono[k % len(mono)] if mono and prefer_mono else pool[k % len(pool)]
    lines = receipt_lines(rng, korean, int(rng.integers(WORDS_PER_IMAGE[0], WORDS_PER_IMAGE[1] + 1)))

    wr = int(rng.uniform(0.62, 0.86) * min(width, 0.8 * height))
    # Type size: 23-32 monospaced characters a line, a little larger than on real
    # receipts (32-48) so that words survive the CPU demo's small input. Never below
    # `floor`: items are dropped instead, down to one, and a receipt still too long is
    # scaled down with the photo (`photo.homography`).
    base = int(np.clip(text_scale * wr / rng.uniform(14, 19), 9, 96))
    floor = max(9, round(0.02 * text_scale * height))
    margin, leading = int(wr * rng.uniform(0.04, 0.08)), float(rng.uniform(1.15, 1.5))
    while True:  # smaller type, then fewer items, until the receipt fits the canvas
        placed, hr = layout(lines, font, base, wr, margin, leading)
        if hr <= 0.95 * height:
            break
        if base > floor:
            base = max(floor, int(base * min(0.95, np.sqrt(0.95 * height / hr))))
        else:
            last = max(line.item for line in lines)
            if last <= 1:
                break
            lines = [line for line in lines if line.item != last]

    ink = np.zeros((hr, wr), np.uint8)
    level = rng.uniform(0.7, 1.0)  # how dark this printer prints
    boxes: list[Box] = []
    for p in placed:
        if p.kind == "word":
            box = draw_word(ink, p, level * rng.uniform(0.85, 1.0))
            if box is not None:
                boxes.append(box)
        else:
            draw_decoration(ink, p, rng)
    alpha = ink.astype(np.float32) * np.float32(1 / 255)
    if rng.random() < 0.4:  # thermal paper fades unevenly
        alpha *= 1 - np.float32(0.125) * (smooth_field(rng, (hr, wr), 4) + 1)
    # Planar (C, H, W) float32 until the photo is done: NumPy broadcasting over a last
    # axis of 3 runs a 3-long inner loop, and float64 doubles the memory traffic.
    paper_rgb = ((rng.uniform(228, 252) + rng.uniform(-5, 3, 3)) * cast).astype(np.float32)[:, None, None]
    paper = paper_rgb + smooth_field(rng, (hr, wr), 6) * np.float32(4)
    ink_rgb = ((rng.uniform(10, 60) + rng.uniform(-8, 8, 3)) * cast).astype(np.float32)[:, None, None]
    rgb = (ink_rgb - paper) * alpha
    rgb += paper
    return rgb, boxes, korean
