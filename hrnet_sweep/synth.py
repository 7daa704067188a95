"""Deterministic synthetic receipts with exact word polygons: the demo's default dataset
(DESIGN.md section 10).

`generate(out_dir, num_images=N, seed=S)` writes `out_dir/images/*.jpg` and one
annotation JSON per split (`train.json`, `val.json`, `test.json`) in the competition
format. Image `i` is drawn from `numpy.random.default_rng((seed, i))` alone, so it does
not depend on how many images are generated, and the same seed gives byte-identical
files on the same machine (the fonts found there are part of the input).

How one image is made (`render`): lay out receipt lines (centred header, item table
with left/centre/right aligned columns, totals, footer, rules and a barcode that are not
annotated) on an ink layer, word by word; each word's box is the exact extent of its
rendered ink (plus `_PAD`). The paper is composited onto a background through one
homography (rotation, scale, perspective); the word boxes go through the same matrix.
Photometric damage (illumination gradient, shadow, blur, noise, JPEG) moves no pixel, so
the polygons stay exact.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UserError
from .io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["generate", "render", "find_fonts", "main", "SynthImage", "FontSet", "Font", "DEFAULT_SIZE", "IMAGES_DIR"]

DEFAULT_SIZE = (480, 640)
"""Canvas (width, height) in pixels: receipts about 300-410 px wide, small for CPU demos."""
IMAGES_DIR = "images"
INFO_FILE = "synth_info.json"
WORDS_PER_IMAGE = (15, 80)
"""Target range of annotated words per image (drawn uniformly per image)."""
DEFAULT_SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
FONT_DIRS = (
    "/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
    "/Library/Fonts", "/System/Library/Fonts", "~/Library/Fonts", "C:/Windows/Fonts",
)  # fmt: skip
_PAD = 1  # pixels added around the ink box of each word, as annotators leave a little room
_MAX_FONT_FILES = 400
_FONT_SKIP = re.compile(r"italic|oblique|light|thin|black|heavy|math|symbol|emoji|icon|dingbat", re.I)


# ----------------------------------------------------------------------------- fonts


@dataclass(frozen=True)
class Font:
    """A font family: regular and (where found) bold file; `None` is Pillow's own font."""

    regular: str | None
    bold: str | None = None
    mono: bool = False

    def get(self, size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
        return _load_font(self.bold if bold and self.bold else self.regular, int(size))


@dataclass(frozen=True)
class FontSet:
    """Fonts usable for Latin text, and those that also cover Hangul."""

    latin: tuple[Font, ...]
    korean: tuple[Font, ...]
    searched: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1024)
def _load_font(path: str | None, size: int):
    if path is None:
        try:
            return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
        except (TypeError, ImportError):  # pragma: no cover - Pillow built without FreeType
            return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def _has_glyphs(font, chars: str) -> bool:
    """Glyph test: every char draws something, and no two draw the same bitmap (a font
    without the glyphs draws the same 'missing' box, or nothing, for all of them)."""
    seen = set()
    for ch in chars:
        img = Image.new("L", (48, 48), 0)
        ImageDraw.Draw(img).text((8, 8), ch, font=font, fill=255)
        arr = np.asarray(img)
        if not arr.any():
            return False
        seen.add(arr.tobytes())
    return len(seen) == len(chars)


def _font_files(dirs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith((".ttf", ".otf", ".ttc"))]
            if len(files) >= _MAX_FONT_FILES:
                return files[:_MAX_FONT_FILES]
    return files


@functools.lru_cache(maxsize=8)
def find_fonts(dirs: tuple[str, ...] | None = None) -> FontSet:
    """Search font folders (default `FONT_DIRS`) for upright regular fonts and pair each
    with its bold face. Falls back to Pillow's built-in font when nothing usable is found.
    """
    dirs = tuple(str(d) for d in (FONT_DIRS if dirs is None else dirs))
    by_family: dict[str, dict[str, str]] = {}
    for path in _font_files(dirs):
        stem = path.stem
        if _FONT_SKIP.search(stem.replace("Bold", "")):
            continue
        bold = "bold" in stem.lower()
        family = re.sub(r"[-_ ]|bold|regular|book|medium", "", stem.lower())
        by_family.setdefault(family, {}).setdefault("bold" if bold else "regular", str(path))
    latin, korean = [], []
    for family in sorted(by_family):
        faces = by_family[family]
        if "regular" not in faces:
            continue
        try:
            probe = _load_font(faces["regular"], 24)
        except OSError:
            continue
        if not _has_glyphs(probe, "Ag7"):
            continue
        font = Font(faces["regular"], faces.get("bold"), mono=bool(re.search(r"mono|coding|courier", family)))
        latin.append(font)
        if _has_glyphs(probe, "가한글"):
            korean.append(font)
    if not latin:
        latin.append(Font(None))
    return FontSet(tuple(latin), tuple(korean), dirs)


_announced: set[tuple[str, ...]] = set()


# ----------------------------------------------------------------------------- receipt text

_EN = {
    "stores": ("FRESH MART", "CORNER CAFE", "BLUE HARBOR COFFEE", "GREEN LEAF GROCER", "CITY PHARMACY",
               "SUNNY BAKERY", "QUICK STOP", "PIZZA HOUSE", "THE BOOK NOOK", "DAILY DELI", "MAPLE DINER"),
    "addr": ("Main St", "Oak Ave", "Park Rd", "Market St", "River Blvd", "Station Rd"),
    "city": ("Springfield, IL", "Riverside, CA", "Fairview, TX", "Lakewood, NJ", "Portland, OR"),
    "items": ("Americano", "Cafe Latte", "Bagel", "Orange Juice", "Milk 1L", "Eggs 12pk", "Banana", "Green Tea",
              "Club Sandwich", "Cheese Cake", "Water 500ml", "Potato Chips", "Chocolate Bar", "Shampoo",
              "Toothpaste", "Notebook A5", "Black Pen", "Red Apple", "Instant Ramen", "Croissant", "Iced Tea",
              "Vanilla Ice Cream", "Paper Towels", "Dish Soap", "Greek Yogurt", "Wheat Bread", "Spaghetti"),
    "cols": ("ITEM", "PRICE", "QTY", "AMOUNT"), "sub": "Subtotal", "tax": "Tax 10%", "total": "TOTAL",
    "cash": "Cash", "change": "Change", "card": "VISA ****", "appr": "Approval No.",
    "thanks": ("Thank you!", "Please come again", "Have a nice day!"), "no": "Receipt No.",
    "staff": "Cashier:", "names": ("Kim", "Lee", "Maria", "John", "Alex"), "tel": "Tel.",
    "web": ("www.freshmart.com", "www.dailydeli.net", "shop.example.org"),
}  # fmt: skip
_KO = {
    "stores": ("행복마트", "스타 커피", "우리동네 약국", "김밥천국 강남점", "하늘 베이커리", "세븐 편의점",
               "바다 횟집", "한솔 문구"),
    "addr": ("서울특별시 강남구 테헤란로", "부산광역시 해운대구 해운대로", "경기도 성남시 분당구 판교역로",
             "서울시 마포구 월드컵로"),
    "items": ("아메리카노", "카페라떼", "삼각김밥", "생수 500ml", "컵라면", "바나나우유", "초코파이", "새우깡",
              "치즈케이크", "녹차", "두부 1모", "계란 10구", "김치찌개", "된장찌개", "비빔밥", "떡볶이",
              "오렌지 주스", "샴푸", "치약", "볼펜 검정", "공책", "사과 1kg", "우유 1L", "식빵"),
    "cols": ("품명", "단가", "수량", "금액"), "sub": "과세물품가액", "tax": "부가세", "total": "합계",
    "cash": "현금", "change": "거스름돈", "card": "신용카드 ****", "appr": "승인번호",
    "thanks": ("감사합니다", "또 방문해 주세요", "좋은 하루 되세요"), "no": "영수증 번호",
    "staff": "대표자:", "names": ("홍길동", "김철수", "이영희", "박민수"), "tel": "전화",
    "biz": "사업자번호",
}  # fmt: skip


@dataclass
class _Seg:
    text: str
    x: float  # anchor as a fraction of the printable width
    align: str  # "l", "c" or "r"


@dataclass
class _Line:
    segs: list[_Seg] = field(default_factory=list)
    scale: float = 1.0
    bold: bool = False
    kind: str = "text"  # text | rule | barcode | gap
    item: bool = False  # item lines are dropped first when the receipt does not fit

    @property
    def words(self) -> int:
        return sum(len(s.text.split()) for s in self.segs)


def _t(*segs, **kw) -> _Line:
    return _Line([_Seg(*s) for s in segs], **kw)


def _receipt_lines(rng: np.random.Generator, ko: bool, target: int) -> list[_Line]:
    """Receipt content as lines of aligned segments, about `target` words in all."""
    v = _KO if ko else _EN
    p = float(np.clip((target - WORDS_PER_IMAGE[0]) / 65, 0.1, 0.95))  # optional parts

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    won = ko or rng.random() < 0.5

    def money(cents: int, sign: bool = False) -> str:
        if won:
            return f"{cents * 10:,}" + ("원" if ko and sign else "")
        return ("$" if sign else "") + f"{cents / 100:.2f}"

    rule = pick(("-", "=", "solid", "dots"))
    r = lambda: _Line(kind="rule", segs=[_Seg(rule, 0, "l")])  # noqa: E731
    head = [_t((pick(v["stores"]), 0.5, "c"), scale=float(rng.uniform(1.3, 1.8)), bold=True)]
    if rng.random() < p:
        if ko:
            head.append(_t((f"{pick(v['addr'])} {rng.integers(1, 400)}", 0.5, "c")))
            head.append(_t((f"{v['biz']} {rng.integers(100, 999)}-{rng.integers(10, 99)}-{rng.integers(10000, 99999)}", 0.5, "c")))
        else:
            head.append(_t((f"{rng.integers(1, 9999)} {pick(v['addr'])}", 0.5, "c")))
            head.append(_t((pick(v["city"]), 0.5, "c")))
    if rng.random() < p:
        head.append(_t((f"{v['tel']} 0{rng.integers(2, 70)}-{rng.integers(100, 9999)}-{rng.integers(1000, 9999):04d}", 0.5, "c")))
    head.append(r())
    date = f"{rng.integers(2019, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    head.append(_t((f"{date} {rng.integers(8, 23):02d}:{rng.integers(0, 60):02d}", 0, "l"), (f"#{rng.integers(1, 9999):04d}", 1, "r")))
    if rng.random() < p:
        head.append(_t((f"{v['staff']} {pick(v['names'])}", 0, "l"), (f"POS {rng.integers(1, 20):02d}", 1, "r")))
    style = pick(("3col", "4col", "2line"))
    if style != "2line" and rng.random() < 0.8:
        name, unit, qty, amount = v["cols"]
        cols = [(name, 0, "l"), (unit, 0.58, "r"), (qty, 0.72, "c")] if style == "4col" else [(name, 0, "l"), (qty, 0.66, "c")]
        head += [r(), _t(*cols, (amount, 1, "r"))]
    head.append(r())

    total = 0
    items: list[_Line] = []
    tail_words = 8 + int(4 * p)  # about what the totals and footer below add
    words = sum(line.words for line in head) + tail_words
    while words < target or not items:
        name, qty, unit = pick(v["items"]), int(rng.integers(1, 5)), int(rng.integers(50, 9000))
        unit = unit // 10 * 10 if won else unit  # won prices in hundreds
        total += qty * unit
        if style == "2line":
            lines = [_t((name, 0, "l"), item=True),
                     _t((f"{qty} x {money(unit)}", 0.06, "l"), (money(qty * unit), 1, "r"), item=True)]  # fmt: skip
        elif style == "4col":
            lines = [_t((name, 0, "l"), (money(unit), 0.58, "r"), (str(qty), 0.72, "c"), (money(qty * unit), 1, "r"), item=True)]
        else:
            lines = [_t((name, 0, "l"), (str(qty), 0.66, "c"), (money(qty * unit), 1, "r"), item=True)]
        items += lines
        words += sum(line.words for line in lines)

    tail = [r()]
    if rng.random() < p:
        tail += [_t((v["sub"], 0, "l"), (money(total * 10 // 11), 1, "r")), _t((v["tax"], 0, "l"), (money(total - total * 10 // 11), 1, "r"))]
    tail.append(_t((v["total"], 0, "l"), (money(total, sign=True), 1, "r"), scale=float(rng.uniform(1.1, 1.4)), bold=True))
    if rng.random() < 0.5:
        paid = total + int(rng.integers(0, 5)) * (1000 if won else 100)
        tail += [_t((v["cash"], 0, "l"), (money(paid), 1, "r")), _t((v["change"], 0, "l"), (money(paid - total), 1, "r"))]
    else:
        tail += [_t((f"{v['card']}{rng.integers(1000, 9999)}", 0, "l"), (money(total), 1, "r"))]
        if rng.random() < p:
            tail.append(_t((f"{v['appr']} {rng.integers(10**7, 10**8)}", 0, "l")))
    tail += [r(), _t((pick(v["thanks"]), 0.5, "c"))]
    if rng.random() < p * 0.7:
        tail.append(_Line(kind="barcode"))
    if not ko and rng.random() < p * 0.5:
        tail.append(_t((pick(v["web"]), 0.5, "c")))
    return head + items + tail


# ----------------------------------------------------------------------------- layout


@dataclass
class _Placed:
    """One drawable thing in receipt pixels: a word (with its ink box) or a decoration."""

    kind: str  # word | rule | barcode
    text: str = ""
    font: object = None
    x: int = 0  # word: left of the origin; others: left edge
    y: int = 0  # word: baseline; others: centre line
    w: int = 0
    size: int = 0


def _layout(lines: list[_Line], font: Font, base: int, width: int, margin: int, leading: float) -> tuple[list[_Placed], int]:
    """Place every word; drop words where segments would overlap. Returns (placed, height)."""
    placed: list[_Placed] = []
    y = float(margin)
    usable = width - 2 * margin
    for line in lines:
        size = max(8, round(base * line.scale))
        if line.kind == "gap":
            y += base * 0.6
            continue
        if line.kind == "rule":
            h = base * 0.9
            placed.append(_Placed("rule", line.segs[0].text, font.get(base), margin, round(y + h / 2), usable, base))
            y += h
            continue
        if line.kind == "barcode":
            h = base * 2.6
            placed.append(_Placed("barcode", "", None, margin + usable // 5, round(y + h / 2), usable * 3 // 5, round(h * 0.8)))
            y += h
            continue
        f = font.get(size, line.bold)
        ascent, descent = f.getmetrics()
        space = f.getlength(" ")
        segs = [[s.text.split(), s] for s in line.segs]
        while True:  # position the segments; shorten the longest one while any overlap
            spans = []
            for words, s in segs:
                w = sum(f.getlength(t) for t in words) + space * (len(words) - 1)
                x0 = margin + s.x * usable - {"l": 0, "c": w / 2, "r": w}[s.align]
                x0 = min(max(x0, margin), width - margin - w)
                spans.append((x0, x0 + w))
            order = sorted(range(len(segs)), key=lambda i: spans[i][0])
            clash = [i for i, j in zip(order, order[1:]) if spans[i][1] + space > spans[j][0]]
            clash += [i for i in order if spans[i][0] < margin - 0.5]  # wider than the paper
            if not clash:
                break
            k = max(clash + [order[order.index(c) + 1] for c in clash if c in order[:-1]], key=lambda i: len(segs[i][0]))
            segs[k][0] = segs[k][0][:-1]
            segs = [sw for sw in segs if sw[0]]
        baseline = round(y + ascent)
        for (words, _), (x0, _) in zip(segs, spans):
            x = x0
            for t in words:
                placed.append(_Placed("word", t, f, round(x), baseline, size=size))
                x += f.getlength(t) + space
        y += (ascent + descent) * leading
    return placed, round(y + margin)


def _draw_word(ink: np.ndarray, p: _Placed, strength: float) -> tuple[int, int, int, int] | None:
    """Render one word into the ink layer; return its exact ink box (x0, y0, x1, y1)."""
    bb = p.font.getbbox(p.text, anchor="ls")
    tile = Image.new("L", (bb[2] - bb[0] + 4, bb[3] - bb[1] + 4), 0)
    ImageDraw.Draw(tile).text((2 - bb[0], 2 - bb[1]), p.text, font=p.font, fill=255, anchor="ls")
    a = np.asarray(tile)
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    if not len(rows):
        return None
    ox, oy = p.x + bb[0] - 2, p.y + bb[1] - 2  # tile origin in receipt pixels
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    x0, y0 = ox + cols[0], oy + rows[0]
    h, w = a.shape
    if x0 < 0 or y0 < 0 or y0 + h > ink.shape[0] or x0 + w > ink.shape[1]:
        return None
    region = ink[y0 : y0 + h, x0 : x0 + w]
    np.maximum(region, (a * strength).astype(np.uint8), out=region)
    return x0, y0, x0 + w, y0 + h


def _draw_decoration(ink: np.ndarray, p: _Placed, rng: np.random.Generator) -> None:
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
        step = max(3, p.size // 4)
        for x in range(p.x, p.x + p.w - 1, step):
            ink[p.y : p.y + 2, x : x + 2] = 255
    else:  # a row of '-' or '=' characters, as thermal printers draw them
        img = Image.new("L", (p.w, p.size * 2), 0)
        count = max(1, int(p.w / max(1.0, p.font.getlength(p.text))))
        ImageDraw.Draw(img).text((0, p.size), p.text * count, font=p.font, fill=255, anchor="lm")
        region = ink[p.y - p.size : p.y + p.size, p.x : p.x + p.w]
        np.maximum(region, np.asarray(img)[: region.shape[0], : region.shape[1]], out=region)


# ----------------------------------------------------------------------------- rendering


@dataclass
class SynthImage:
    """One rendered receipt photo (before JPEG) and its annotation."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    polygons: list[np.ndarray]  # (4, 2) float32 quads, clockwise from top-left, image pixels
    paper: np.ndarray  # (4, 2) float32 outline of the receipt paper in the image
    korean: bool
    jpeg_quality: int


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 5) -> np.ndarray:
    """Low-frequency noise in [-1, 1], float32: paper texture, fading, table colour."""
    small = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _homography(rng, wr: int, hr: int, width: int, height: int) -> np.ndarray:
    """Receipt -> canvas: rotation, perspective jitter, scale to fit, random placement.
    Both sides in edge coordinates (pixel i spans [i, i + 1))."""
    src = np.array([[0, 0], [wr, 0], [wr, hr], [0, hr]], np.float64)
    angle = np.deg2rad(np.clip(rng.normal(0, 2.5), -7, 7))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src - [wr / 2, hr / 2]) @ rot.T + rng.uniform(-0.035, 0.035, (4, 2)) * wr
    lo, hi = dst.min(0), dst.max(0)
    scale = min(1.0, 0.97 * width / (hi[0] - lo[0]), 0.97 * height / (hi[1] - lo[1])) * rng.uniform(0.92, 1.0)
    dst *= scale
    lo, hi = dst.min(0), dst.max(0)
    shift = [rng.uniform(2 - lo[0], width - 2 - hi[0]), rng.uniform(2 - lo[1], height - 2 - hi[1])]
    return cv2.getPerspectiveTransform(src.astype(np.float32), (dst + shift).astype(np.float32)).astype(np.float64)


def _background(rng, width: int, height: int) -> np.ndarray:
    palette = np.array([[128, 90, 60], [45, 45, 50], [150, 150, 148], [60, 80, 115], [205, 200, 190], [95, 120, 90]])
    base = (palette[int(rng.integers(len(palette)))] + rng.uniform(-25, 25, 3)).astype(np.float32)
    field_ = _smooth_field(rng, (height, width), 4)[..., None] * np.float32(rng.uniform(10, 35))
    return np.clip(base + field_, 0, 255)


def _render(rng: np.random.Generator, width: int, height: int, fonts: FontSet, allow_korean: bool) -> SynthImage:
    # Draw order is fixed so that the same rng gives the same image on every run.
    korean = bool(rng.random() < 0.5) and allow_korean
    pool = fonts.korean if korean else fonts.latin
    mono = [f for f in pool if f.mono]  # receipt printers favour monospaced type
    prefer_mono, k = rng.random() < 0.5, int(rng.integers(1 << 30))
    font = mono[k % len(mono)] if mono and prefer_mono else pool[k % len(pool)]
    target = int(rng.integers(WORDS_PER_IMAGE[0], WORDS_PER_IMAGE[1] + 1))
    lines = _receipt_lines(rng, korean, target)

    wr = int(rng.uniform(0.62, 0.86) * min(width, 0.8 * height))
    base = int(np.clip(wr / rng.uniform(17, 25), 9, 48))
    margin, leading = int(wr * rng.uniform(0.04, 0.08)), float(rng.uniform(1.15, 1.5))
    while True:  # shrink the type, then drop items, until the receipt fits the canvas
        placed, hr = _layout(lines, font, base, wr, margin, leading)
        if hr <= 0.95 * height:
            break
        if base > 11:
            base = max(11, int(base * min(0.95, np.sqrt(0.95 * height / hr))))
        else:
            items = [i for i, line in enumerate(lines) if line.item]
            if not items:
                break
            del lines[items[-1]]

    ink = np.zeros((hr, wr), np.uint8)
    level = rng.uniform(0.7, 1.0)
    boxes = []
    for p in placed:
        if p.kind == "word":
            box = _draw_word(ink, p, level * rng.uniform(0.85, 1.0))
            if box is not None:
                boxes.append(box)
        else:
            _draw_decoration(ink, p, rng)
    alpha = ink.astype(np.float32) * np.float32(1 / 255)
    if rng.random() < 0.4:  # thermal paper fades unevenly
        alpha *= 1 - np.float32(0.125) * (_smooth_field(rng, (hr, wr), 4) + 1)
    # float32 throughout: float64 doubles the time of every full-image operation
    paper = (rng.uniform(228, 252) + rng.uniform(-5, 3, 3)).astype(np.float32) + _smooth_field(rng, (hr, wr), 6)[..., None] * 4
    ink_rgb = (rng.uniform(10, 60) + rng.uniform(-8, 8, 3)).astype(np.float32)
    alpha = alpha[..., None]
    receipt = paper * (1 - alpha) + ink_rgb * alpha

    # Paper onto the table through one homography; warpPerspective works in pixel-centre
    # coordinates, so conjugate the edge-coordinate matrix by a half-pixel shift.
    H = _homography(rng, wr, hr, width, height)
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    M = np.linalg.inv(half) @ H @ half
    size = (width, height)
    warped = cv2.warpPerspective(receipt, M, size, flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpPerspective(np.ones((hr, wr), np.float32), M, size, flags=cv2.INTER_LINEAR, borderValue=0)
    bg = _background(rng, width, height)
    shadow = cv2.GaussianBlur(mask, (0, 0), rng.uniform(2, 6))
    dx, dy = (int(v) for v in rng.integers(1, 6, 2))
    bg[dy:, dx:] *= 1 - np.float32(rng.uniform(0.2, 0.45)) * shadow[: height - dy, : width - dx, None]
    img = bg * (1 - mask[..., None]) + warped  # `warped` is premultiplied by the mask

    # Photometric damage: no pixel moves, so the polygons stay exact.
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    phi, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.15)
    light = 1 + (xx * np.float32(amp * np.cos(phi)) + yy * np.float32(amp * np.sin(phi)))
    if rng.random() < 0.35:  # a soft-edged shadow across part of the photo
        phi2, off = rng.uniform(0, 2 * np.pi), rng.uniform(-0.6, 0.6)
        sharp = min(width, height) / rng.uniform(3, 25)
        d = xx * np.float32(np.cos(phi2) * sharp) + yy * np.float32(np.sin(phi2) * sharp) - np.float32(off * sharp)
        light = light * (1 - np.float32(rng.uniform(0.2, 0.45)) / (1 + np.exp(-np.clip(d, -30, 30))))
    img *= light[..., None] * (1 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    if rng.random() < 0.8:
        img += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(1, 6))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    quads = np.array([[[x0 - _PAD, y0 - _PAD], [x1 + _PAD, y0 - _PAD], [x1 + _PAD, y1 + _PAD], [x0 - _PAD, y1 + _PAD]]
                      for x0, y0, x1, y1 in boxes], np.float64).reshape(-1, 4, 2)  # fmt: skip
    quads[..., 0] = quads[..., 0].clip(0, wr)
    quads[..., 1] = quads[..., 1].clip(0, hr)
    corners = np.array([[[0, 0], [wr, 0], [wr, hr], [0, hr]]], np.float64)
    polys = cv2.perspectiveTransform(quads, H) if len(quads) else quads
    polys[..., 0] = polys[..., 0].clip(0, width - 1)
    polys[..., 1] = polys[..., 1].clip(0, height - 1)
    return SynthImage(
        image=image,
        polygons=[p.astype(np.float32) for p in polys],
        paper=cv2.perspectiveTransform(corners, H)[0].astype(np.float32),
        korean=korean,
        jpeg_quality=int(rng.integers(55, 96)),
    )


def _fonts_for(korean: bool | None, font_dirs: Sequence[str | os.PathLike] | None) -> tuple[FontSet, bool]:
    fonts = find_fonts(None if font_dirs is None else tuple(str(d) for d in font_dirs))
    if korean and not fonts.korean:
        raise UserError(
            f"korean=True but no font with Hangul glyphs was found in {', '.join(fonts.searched)}; "
            "install one (e.g. Debian's fonts-nanum) or pass --no-korean"
        )
    if korean is None and not fonts.korean and fonts.searched not in _announced:
        _announced.add(fonts.searched)
        log.warning("no font with Hangul glyphs found (searched %s): synthetic receipts are English only", ", ".join(fonts.searched))
    return fonts, bool(fonts.korean) and korean is not False


def render(seed: int, index: int, *, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
           korean: bool | None = None, font_dirs: Sequence[str | os.PathLike] | None = None) -> SynthImage:  # fmt: skip
    """Render image `index` of the dataset with seed `seed` (what `generate` saves)."""
    _check_args(1, seed, width, height)
    fonts, allow_korean = _fonts_for(korean, font_dirs)
    return _render(np.random.default_rng((seed, index)), width, height, fonts, allow_korean)


# ----------------------------------------------------------------------------- dataset


def _check_args(num_images: int, seed: int, width: int, height: int) -> None:
    if not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise UserError(f"num_images={num_images!r}: must be an integer >= 1")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed={seed!r}: must be an integer >= 0")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or not 128 <= v <= 8192:
            raise UserError(f"{name}={v!r}: must be an integer in [128, 8192]")


def _split_ranges(num_images: int, splits: dict[str, int] | None) -> dict[str, range]:
    if splits is None:
        n_val = round(num_images * DEFAULT_SPLIT_FRACTIONS["val"])
        n_test = round(num_images * DEFAULT_SPLIT_FRACTIONS["test"])
        if num_images >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test)
        splits = {"train": num_images - n_val - n_test, "val": n_val, "test": n_test}
    for name, n in splits.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
            raise UserError(f"split name {name!r}: use letters, digits, '_', '.', '-'")
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"split {name!r}: count {n!r} must be an integer >= 0")
    if sum(splits.values()) != num_images:
        raise UserError(f"splits {dict(splits)} add up to {sum(splits.values())}, not num_images={num_images}")
    out, start = {}, 0
    for name, n in splits.items():
        out[str(name)] = range(start, start + int(n))
        start += int(n)
    return out


def image_name(index: int) -> str:
    return f"receipt_{index:06d}.jpg"


def generate(out_dir: str | os.PathLike, *, num_images: int, seed: int = 0, width: int = DEFAULT_SIZE[0],
             height: int = DEFAULT_SIZE[1], splits: dict[str, int] | None = None, korean: bool | None = None,
             progress: bool = True, font_dirs: Sequence[str | os.PathLike] | None = None) -> dict[str, Path]:  # fmt: skip
    """Render `num_images` receipts into `out_dir`; return {split: annotation JSON path}.

    Images go to `out_dir/images/receipt_NNNNNN.jpg`; the splits (default train/val/test
    70/15/15 %, or `splits={name: count}` adding up to `num_images`) take consecutive
    indices. `korean=None` adds Korean receipts where a Hangul font is found (announced
    once otherwise), `True` requires one, `False` never. `font_dirs` replaces the
    standard font folders. Every file is written atomically; `synth_info.json` records
    the parameters and fonts.
    """
    from tqdm import tqdm

    _check_args(num_images, seed, width, height)
    ranges = _split_ranges(num_images, splits)
    fonts, allow_korean = _fonts_for(korean, font_dirs)
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    docs = {name: {"images": {}} for name in ranges}
    split_of = {i: name for name, rng_ in ranges.items() for i in rng_}
    for i in tqdm(range(num_images), desc="synth", unit="img", disable=not progress):
        item = _render(np.random.default_rng((seed, i)), width, height, fonts, allow_korean)
        ok, buf = cv2.imencode(".jpg", item.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, item.jpeg_quality])
        if not ok:  # pragma: no cover
            raise RuntimeError(f"JPEG encoding failed for image {i}")
        name = image_name(i)
        with atomic_path(out_dir / IMAGES_DIR / name) as tmp:
            tmp.write_bytes(buf.tobytes())
        words = {f"{k:04d}": {"points": np.round(p.astype(np.float64), 1).tolist()} for k, p in enumerate(item.polygons, 1)}
        docs[split_of[i]]["images"][name] = {"img_w": width, "img_h": height, "words": words}
    paths = {name: atomic_write_json(out_dir / f"{name}.json", doc) for name, doc in docs.items()}
    used = fonts.latin + tuple(f for f in fonts.korean if allow_korean and f not in fonts.latin)
    atomic_write_json(out_dir / INFO_FILE, {
        "generator": "hrnet_sweep.synth", "seed": int(seed), "num_images": int(num_images),
        "width": int(width), "height": int(height), "korean": allow_korean,
        "splits": {n: len(r) for n, r in ranges.items()},
        "fonts": sorted({Path(p).name for f in used for p in (f.regular, f.bold) if p} or {"<pillow default>"}),
    }, indent=2)  # fmt: skip
    return paths


# ----------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 480x640")
    return int(m.group(1)), int(m.group(2))


def _parse_splits(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, n = part.partition("=")
        if not n.strip().isdigit():
            raise UserError(f"--splits {text!r}: expected NAME=COUNT,..., e.g. train=70,val=15,test=15")
        out[name.strip()] = int(n)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep synth --out DIR [--num N] [--seed S] [--size WxH] [--no-korean]`."""
    ap = argparse.ArgumentParser(prog="hrnet_sweep synth", description="Render deterministic synthetic receipts with word polygons.")
    ap.add_argument("--out", required=True, type=Path, help="output folder (images/ and one JSON per split)")
    ap.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="canvas WIDTHxHEIGHT (default %(default)s)")
    ap.add_argument("--splits", help="NAME=COUNT,... adding up to --num (default train/val/test 70/15/15%%)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--no-korean", dest="korean", action="store_const", const=False, help="English receipts only")
    group.add_argument("--korean", dest="korean", action="store_const", const=True, help="require a Hangul font")
    ap.add_argument("--font-dir", action="append", help="font folder to search instead of the standard ones (repeatable)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    width, height = _parse_size(args.size)
    paths = generate(
        args.out, num_images=args.num, seed=args.seed, width=width, height=height,
        splits=_parse_splits(args.splits) if args.splits else None, korean=args.korean,
        progress=not args.quiet, font_dirs=args.font_dir,
    )  # fmt: skip
    print(f"wrote {args.num} images ({width}x{height}, seed {args.seed}) to {args.out / IMAGES_DIR}")
    for name, path in paths.items():
        doc = json.loads(path.read_text(encoding="utf-8"))["images"]
        print(f"  {name:<6} {path}  ({len(doc)} images, {sum(len(v['words']) for v in doc.values())} words)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        print(f"hrnet_sweep synth: {err}", file=sys.stderr)
        sys.exit(2)
