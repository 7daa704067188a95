"""The dataset on disk: images, one annotation JSON per split, and `hrnet_sweep synth`."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..files import atomic_path, atomic_write_json
from ..numeric import flag, number_text
from ..progress import track
from .fonts import fonts_for
from .photo import SynthImage, render_image

DEFAULT_SIZE = (480, 640)
"""Canvas (width, height): receipts about 300-410 px wide, small for the CPU demo."""
IMAGES_DIR = "images"
INFO_FILE = "synth_info.json"
DEFAULT_SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def _check_args(num_images: int, seed: int, width: int, height: int, text_scale: float) -> None:
    if not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise UserError(f"num_images={num_images!r}: must be an integer >= 1")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed={seed!r}: must be an integer >= 0")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or not 128 <= v <= 8192:
            raise UserError(f"{name}={v!r}: must be an integer in [128, 8192]")
    if not isinstance(text_scale, (int, float)) or not 0.5 <= text_scale <= 3:
        raise UserError(f"text_scale={text_scale!r}: must be a number in [0.5, 3]")


def render(
    seed: int,
    index: int,
    *,
    width: int = DEFAULT_SIZE[0],
    height: int = DEFAULT_SIZE[1],
    korean: bool | None = None,
    font_dirs: Sequence[str | os.PathLike] | None = None,
    text_scale: float = 1.0,
) -> SynthImage:
    """Image `index` of the dataset with seed `seed`, exactly what `generate` saves (before
    JPEG): it comes from `numpy.random.default_rng((seed, index))` alone."""
    _check_args(1, seed, width, height, text_scale)
    fonts, allow_korean = fonts_for(korean, font_dirs)
    return render_image(np.random.default_rng((seed, index)), width, height, fonts, allow_korean, text_scale)


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


def generate(
    out_dir: str | os.PathLike,
    *,
    num_images: int,
    seed: int = 0,
    width: int = DEFAULT_SIZE[0],
    height: int = DEFAULT_SIZE[1],
    splits: dict[str, int] | None = None,
    korean: bool | None = None,
    progress: bool = True,
    font_dirs: Sequence[str | os.PathLike] | None = None,
    text_scale: float = 1.0,
) -> dict[str, Path]:
    """Render `num_images` receipts into `out_dir`; return {split: annotation JSON path}.

    Images go to `out_dir/images/receipt_NNNNNN.jpg`, annotations to `out_dir/<split>.json`
    (competition format, `img_w`/`img_h` included). The splits (default train/val/test
    70/15/15 %, or `splits={name: count}` adding up to `num_images`) take consecutive
    indices. `korean=None` adds Korean receipts where a Hangul font is found (said once
    otherwise), `True` requires one, `False` never. `font_dirs` replaces the standard font
    folders. `text_scale` > 1 prints larger type, and so fewer words: at 1, most word
    boxes are 10-20 px high on a 640 px canvas, as small relative to the image as on
    photographed receipts. Every file is written atomically; `synth_info.json` records
    the parameters and the fonts found, which are part of what a seed means.
    """
    _check_args(num_images, seed, width, height, text_scale)
    ranges = _split_ranges(num_images, splits)
    fonts, allow_korean = fonts_for(korean, font_dirs)
    out_dir = Path(out_dir)
    docs: dict[str, dict] = {name: {"images": {}} for name in ranges}
    split_of = {i: name for name, span in ranges.items() for i in span}
    for i in track(range(num_images), desc="synth", unit="img", enabled=progress):
        item = render_image(np.random.default_rng((seed, i)), width, height, fonts, allow_korean, text_scale)
        ok, buf = cv2.imencode(".jpg", item.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, item.jpeg_quality])
        if not ok:  # pragma: no cover
            raise RuntimeError(f"JPEG encoding failed for image {i}")
        with atomic_path(out_dir / IMAGES_DIR / image_name(i)) as tmp:
            tmp.write_bytes(buf.tobytes())
        polys = [np.round(p.astype(np.float64), 1).tolist() for p in item.polygons]
        words = {f"{k:04d}": {"points": pts} for k, pts in enumerate(polys, start=1)}
        docs[split_of[i]]["images"][image_name(i)] = {"img_w": width, "img_h": height, "words": words}
    paths = {name: atomic_write_json(out_dir / f"{name}.json", doc) for name, doc in docs.items()}
    used = fonts.latin + tuple(f for f in fonts.korean if f not in fonts.latin)
    info = {
        "generator": "hrnet_sweep.synth", "seed": int(seed), "num_images": int(num_images),
        "width": int(width), "height": int(height), "text_scale": float(text_scale), "korean": allow_korean,
        "splits": {name: len(span) for name, span in ranges.items()},
        "fonts": sorted({Path(p).name for f in used for p in (f.regular, f.bold) if p}) or ["<Pillow default>"],
    }  # fmt: skip
    atomic_write_json(out_dir / INFO_FILE, info, indent=2)
    return paths


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", text)  # ASCII digits only (\d takes any script)
    if not m:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 480x640")
    return int(m.group(1)), int(m.group(2))


def _parse_splits(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, n = part.partition("=")
        if not isinstance(number_text(n), int):
            raise UserError(f"--splits {text!r}: expected NAME=COUNT,..., e.g. train=70,val=15,test=15")
        out[name.strip()] = int(n)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep synth --out DIR [--num N] [--seed S] [--size WxH] [--no-korean]`."""
    ap = argparse.ArgumentParser(prog="hrnet_sweep synth", description="Render synthetic receipts with word polygons.")
    ap.add_argument("--out", required=True, type=Path, help="output folder: images/ and one JSON per split")
    ap.add_argument("--num", type=flag(int, ge=1), default=100, help="number of images (default %(default)s)")
    ap.add_argument("--seed", type=flag(int), default=0, help="random seed (default %(default)s)")
    ap.add_argument("--size", default="{}x{}".format(*DEFAULT_SIZE), help="canvas WIDTHxHEIGHT (default %(default)s)")
    ap.add_argument(
        "--text-scale", type=flag(float), default=1.0, help="type size factor in [0.5, 3]; larger: fewer words"
    )
    ap.add_argument("--splits", help="NAME=COUNT,... adding up to --num (default train/val/test 70/15/15%%)")
    korean = ap.add_mutually_exclusive_group()
    korean.add_argument("--no-korean", dest="korean", action="store_const", const=False, help="English receipts only")
    korean.add_argument("--korean", dest="korean", action="store_const", const=True, help="fail without a Hangul font")
    ap.add_argument("--font-dir", action="append", help="font folder to search, instead of the standard ones")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    width, height = _parse_size(args.size)
    paths = generate(
        args.out, num_images=args.num, seed=args.seed, width=width, height=height,
        splits=_parse_splits(args.splits) if args.splits else None, korean=args.korean,
        progress=not args.quiet, font_dirs=args.font_dir, text_scale=args.text_scale,
    )  # fmt: skip
    print(f"wrote {args.num} images ({width}x{height}, seed {args.seed}) to {args.out / IMAGES_DIR}")
    for name, path in paths.items():
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        words = sum(len(img["words"]) for img in images.values())
        print(f"  {name:<6} {path}  ({len(images)} images, {words} words)")
    print(f"  info   {args.out / INFO_FILE}")
    return 0
