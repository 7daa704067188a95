"""Deterministic synthetic receipts with exact word polygons: the demo's default dataset.

`generate(out_dir, num_images=N, seed=S)` writes `out_dir/images/*.jpg` and one
annotation JSON per split (`train.json`, `val.json`, `test.json`). Image `i` comes from
`numpy.random.default_rng((seed, i))` alone, so it does not depend on how many images
are made, and the same seed gives byte-identical files on the same machine (the fonts
found there are part of the input; `synth_info.json` lists them).

One image, stage by stage:

- `text`: what the receipt says (header, item table, totals, footer) as aligned lines;
- `receipt`: lay the lines out and print them word by word on an ink layer; each word's
  box is the exact extent of its own ink;
- `photo`: one homography (rotation, perspective, scale) puts the paper on a table and
  the word boxes into the image; light, shadow, blur and noise move no pixel;
- `dataset`: JPEG, the annotation files, the splits and `hrnet_sweep synth`.
"""

from .dataset import DEFAULT_SIZE, IMAGES_DIR, INFO_FILE, generate, image_name, main, render
from .fonts import FONT_DIRS, Font, FontSet, find_fonts, korean_note
from .photo import SynthImage
from .text import WORDS_PER_IMAGE

__all__ = [
    "DEFAULT_SIZE", "FONT_DIRS", "IMAGES_DIR", "INFO_FILE", "WORDS_PER_IMAGE", "Font", "FontSet",
    "SynthImage", "find_fonts", "generate", "image_name", "korean_note", "main", "render",
]  # fmt: skip
