"""Finding fonts: a small search of the standard font folders, a glyph test for Latin and
for Hangul, and Pillow's built-in font as the last resort."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError

log = logging.getLogger("hrnet_sweep.synth")

FONT_DIRS = (
    "/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
    "/Library/Fonts", "/System/Library/Fonts", "~/Library/Fonts", "C:/Windows/Fonts",
)  # fmt: skip
"""Searched in this order, unless `font_dirs` is given."""
_MAX_FONT_FILES = 400  # a machine with thousands of fonts should not slow every run down
_SKIP = re.compile(r"italic|oblique|light|thin|black|heavy|math|symbol|emoji|icon|dingbat", re.I)


@dataclass(frozen=True)
class Font:
    """A font family: its regular and (where found) bold file; `None` is Pillow's own font."""

    regular: str | None
    bold: str | None = None
    mono: bool = False

    def get(self, size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
        return load_font(self.bold if bold and self.bold else self.regular, int(size))


@dataclass(frozen=True)
class FontSet:
    """Fonts usable for Latin text, and those of them that also cover Hangul."""

    latin: tuple[Font, ...]
    korean: tuple[Font, ...]
    searched: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1024)
def load_font(path: str | None, size: int):
    if path is None:
        try:
            return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
        except (TypeError, ImportError):  # pragma: no cover - Pillow built without FreeType
            return ImageFont.load_default()
    return ImageFont.truetype(path, size)


def has_glyphs(font, chars: str) -> bool:
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
            dirnames.sort()  # a stable order: the font list is part of what a seed means
            files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith((".ttf", ".otf", ".ttc"))]
            if len(files) >= _MAX_FONT_FILES:
                return files[:_MAX_FONT_FILES]
    return files


@functools.lru_cache(maxsize=8)
def find_fonts(dirs: tuple[str, ...] | None = None) -> FontSet:
    """Upright regular fonts under `dirs` (default `FONT_DIRS`), each paired with its bold
    face. Falls back to Pillow's built-in font when nothing usable is found."""
    dirs = tuple(str(d) for d in (FONT_DIRS if dirs is None else dirs))
    by_family: dict[str, dict[str, str]] = {}
    for path in _font_files(dirs):
        if _SKIP.search(path.stem.replace("Bold", "")):
            continue
        face = "bold" if "bold" in path.stem.lower() else "regular"
        family = re.sub(r"[-_ ]|bold|regular|book|medium", "", path.stem.lower())
        by_family.setdefault(family, {}).setdefault(face, str(path))
    latin, korean = [], []
    for family in sorted(by_family):
        faces = by_family[family]
        if "regular" not in faces:
            continue
        try:
            probe = load_font(faces["regular"], 24)
        except OSError:
            continue
        if not has_glyphs(probe, "Ag7"):
            continue
        font = Font(faces["regular"], faces.get("bold"), mono=bool(re.search(r"mono|coding|courier", family)))
        latin.append(font)
        if has_glyphs(probe, "가한글"):
            korean.append(font)
    if not latin:
        latin.append(Font(None))
    return FontSet(tuple(latin), tuple(korean), dirs)


def _searched(fonts: FontSet) -> str:
    """The font folders searched that exist on this machine (the list of every standard
    folder names macOS and Windows ones on Linux), or all of them when none does."""
    here = [d for d in fonts.searched if Path(d).expanduser().is_dir()]
    return ", ".join(here or fonts.searched)


def korean_note(font_dirs: Sequence[str | os.PathLike] | None = None) -> str | None:
    """A line saying that receipts will be English only (no font with Hangul glyphs), or
    None when there is such a font. The demo says it once; `synth` only when asked for
    Korean (`--korean`, an error then)."""
    fonts = find_fonts(None if font_dirs is None else tuple(str(d) for d in font_dirs))
    if fonts.korean:
        return None
    return (
        f"no font with Hangul glyphs in {_searched(fonts)}: synthetic receipts are English only "
        "(install one, e.g. Debian's fonts-nanum, for Korean receipts)"
    )


def fonts_for(korean: bool | None, font_dirs: Sequence[str | os.PathLike] | None = None) -> tuple[FontSet, bool]:
    """The fonts to use and whether Korean receipts are on. `korean=None`: where a Hangul
    font exists (quietly English only otherwise: `korean_note` says so where wanted);
    `True`: required; `False`: never."""
    fonts = find_fonts(None if font_dirs is None else tuple(str(d) for d in font_dirs))
    if korean and not fonts.korean:
        raise UserError(
            f"korean=True but no font with Hangul glyphs was found in {_searched(fonts)}; "
            "install one (e.g. Debian's fonts-nanum) or pass --no-korean"
        )
    if korean is None and not fonts.korean:
        log.debug(korean_note(font_dirs))
    return fonts, bool(fonts.korean) and korean is not False
