"""Overlay PNGs of single images: which boxes a model's panel shows, and the background
(the grey image, or a blank canvas that holds the boxes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from ..files import check_readable_file
from ._load import _scored
from ._model import _Model

if TYPE_CHECKING:
    from .plots import Panel


def _read_gray(images_dir, name: str) -> np.ndarray | None:
    """The image as grey uint8, EXIF orientation applied; None (and a note) if unreadable.

    Not `data.read_image`: overlays are drawn on grey anyway, and `data` imports torch
    (seconds) for a command that needs none of it.
    """
    if images_dir is None:
        return None
    from PIL import Image, ImageOps

    try:
        with Image.open(check_readable_file(Path(images_dir) / name, "image")) as im:
            return np.asarray((ImageOps.exif_transpose(im) or im).convert("L"))
    except (OSError, SyntaxError, ValueError, DataError):  # DataError: a folder or a FIFO, never opened
        return None


def _canvas_size(size, *poly_lists) -> tuple[int, int]:
    """The image size, else the extent of the polygons (a blank canvas that holds them)."""
    if size:
        return int(size[0]), int(size[1])
    pts = [np.asarray(p).reshape(-1, 2) for polys in poly_lists for p in polys if len(p)]
    if not pts:
        return 640, 640
    top = np.concatenate(pts).max(axis=0)
    return max(64, int(top[0]) + 16), max(64, int(top[1]) + 16)


def _error_line(rec: dict, *, narrow: bool = False) -> str:
    """H-Mean and error counts for a panel title; `narrow` (panels side by side) breaks the
    counts over two lines so neighbouring titles do not run into each other."""
    m, e = rec["metric"], rec["errors"]
    sep = "\n" if narrow else " · "
    return (
        f"H-Mean {m['hmean']:.3f} (P {m['precision']:.3f}, R {m['recall']:.3f})\n"
        f"missed {len(e['missed'])} (small {len(e['missed_small'])}) · split {len(e['split'])}{sep}"
        f"merged {len(e['merged'])} · false pos. {len(e['false_positive'])}"
    )


def _model_panel(model: _Model, name: str, gt, title: str) -> Panel:
    from .plots import Panel

    rec = model.images[name]
    polys = model.loaded.polys.get(name, [])
    if gt is not None and rec.get("errors") is not None:
        det = _scored(polys)
        err = rec["errors"]
        return Panel(
            title,
            gt=gt[name].polygons(),
            det=det,
            gt_fill=err["missed"],
            det_fill=err["false_positive"],
            gt_split=err["split"],
            det_merged=err["merged"],
        )
    flagged = {f: rec[f] for f in ("tiny", "huge", "extreme_aspect") if rec[f]}
    return Panel(title, det=polys, det_flagged=flagged)


def _draw(png: Path, panels, name: str, images_dir, sizes, title: str) -> Path:
    """One overlay PNG: on the image when `images_dir` has it, else on a blank canvas."""
    from .plots import overlay

    image = _read_gray(images_dir, name)
    if image is not None:
        size = (image.shape[1], image.shape[0])
    else:
        size = _canvas_size(sizes.get(name), *(p.gt for p in panels), *(p.det for p in panels))
        if images_dir is not None:
            title += "  ·  image not found: blank canvas"
    return overlay(png, panels, size=size, image=image, title=title)


def _clean_stale(out_dir: Path, prefix: str, keep: set[Path]) -> None:
    """Remove overlays of an earlier run (`worst_09_*.png` when this run drew 8)."""
    for old in out_dir.glob(f"{prefix}_[0-9][0-9]_*.png"):
        if old not in keep:
            old.unlink()
