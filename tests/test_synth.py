"""Synthetic receipts: determinism, exact polygons, the annotation format, the CLI."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from hrnet_sweep import synth
from hrnet_sweep.errors import UserError
from hrnet_sweep.formats import load_annotations
from hrnet_sweep.synth.receipt import Placed, draw_word

pytestmark = pytest.mark.unit

SIZE = dict(width=256, height=320)  # small canvases keep these tests well under a second
NUM = 8


def _make(root, seed, num=NUM, **kw):
    return synth.generate(root, num_images=num, seed=seed, progress=False, korean=False, **SIZE, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs with seed 3, one with seed 4."""
    out = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        root = tmp_path_factory.mktemp(f"synth_{key}")
        out[key] = (root, _make(root, seed))
    return out


def _images(root):
    return sorted((root / synth.IMAGES_DIR).glob("*.jpg"))


def _doc(paths):
    merged = {}
    for path in paths.values():
        merged.update(json.loads(path.read_text(encoding="utf-8"))["images"])
    return merged


def test_same_seed_gives_identical_files(runs):
    (ra, pa), (rb, pb) = runs["a"], runs["b"]
    assert pa.keys() == pb.keys() == {"train", "val", "test"}
    for split in pa:
        assert pa[split].read_bytes() == pb[split].read_bytes()
    ia, ib = _images(ra), _images(rb)
    assert [p.name for p in ia] == [p.name for p in ib] and len(ia) == NUM
    for a, b in zip(ia, ib):
        assert a.read_bytes() == b.read_bytes()
        assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))
    assert (ra / synth.INFO_FILE).read_bytes() == (rb / synth.INFO_FILE).read_bytes()


def test_other_seed_differs(runs):
    (ra, pa), (rc, pc) = runs["a"], runs["c"]
    assert pa["train"].read_bytes() != pc["train"].read_bytes()
    for a, c in zip(_images(ra), _images(rc)):
        pixels_a, pixels_c = cv2.imread(str(a)), cv2.imread(str(c))
        assert pixels_a.shape != pixels_c.shape or not np.array_equal(pixels_a, pixels_c)


def test_image_does_not_depend_on_num_images(runs, tmp_path):
    root_a, paths_a = runs["a"]
    _make(tmp_path, 3, num=3, splits={"all": 3})
    for i in range(3):
        name = synth.image_name(i)
        assert (tmp_path / "images" / name).read_bytes() == (root_a / "images" / name).read_bytes()
    assert _doc({"all": tmp_path / "all.json"})[synth.image_name(2)] == _doc(paths_a)[synth.image_name(2)]


def test_render_is_what_generate_saves(runs):
    root, _ = runs["a"]
    item = synth.render(3, 5, korean=False, **SIZE)
    ok, buf = cv2.imencode(".jpg", item.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, item.jpeg_quality])
    assert ok and buf.tobytes() == (root / "images" / synth.image_name(5)).read_bytes()


def test_annotations_load_cleanly(runs, caplog):
    root, paths = runs["a"]
    caplog.set_level(logging.WARNING)
    for _split, path in paths.items():
        anns = load_annotations(path, strict=True)
        raw = json.loads(path.read_text(encoding="utf-8"))["images"]
        assert list(anns) == list(raw)
        for name, ann in anns.items():
            height, width = cv2.imread(str(root / "images" / name)).shape[:2]
            assert (ann.width, ann.height) == (width, height) == (SIZE["width"], SIZE["height"])
            assert len(ann.words) == len(raw[name]["words"]) > 0
            assert all(len(key) == 4 and key.isdigit() for key in raw[name]["words"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_polygons_are_clockwise_quads_inside_the_image(runs):
    _, paths = runs["a"]
    for name, img in _doc(paths).items():
        for word in img["words"].values():
            pts = np.asarray(word["points"], np.float64)
            assert pts.shape == (4, 2)
            assert (pts >= 0).all() and (pts[:, 0] <= img["img_w"] - 1).all() and (pts[:, 1] <= img["img_h"] - 1).all()
            x, y = pts[:, 0], pts[:, 1]
            # shoelace > 0 is clockwise on screen (y down); the first point is the top-left one
            assert np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) > 0, name
            assert np.argmin(x + y) == 0, name


def test_splits_are_disjoint_and_cover_every_image(runs):
    root, paths = runs["a"]
    names = {split: set(json.loads(p.read_text(encoding="utf-8"))["images"]) for split, p in paths.items()}
    assert {k: len(v) for k, v in names.items()} == {"train": 6, "val": 1, "test": 1}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    assert set().union(*names.values()) == {p.name for p in _images(root)}


def test_word_counts_vary(runs):
    _, paths = runs["a"]
    counts = [len(img["words"]) for img in _doc(paths).values()]
    assert len(set(counts)) >= NUM // 2, counts
    assert min(counts) >= 10 and max(counts) <= 100, counts


def _darkness(image):
    return 255.0 - image.astype(np.float32).mean(axis=2)


@pytest.mark.parametrize("index", range(6))
def test_polygons_cover_ink(index):
    item = synth.render(7, index, korean=False, **SIZE)
    dark = _darkness(item.image)
    words = np.zeros(dark.shape, np.uint8)
    for poly in item.polygons:
        cv2.fillPoly(words, [np.round(poly).astype(np.int32)], 1)
    paper = np.zeros(dark.shape, np.uint8)
    cv2.fillPoly(paper, [np.round(item.paper).astype(np.int32)], 1)
    paper = cv2.erode(paper, np.ones((7, 7), np.uint8)) & (1 - cv2.dilate(words, np.ones((5, 5), np.uint8)))
    # median: rules and barcodes are ink too, but few pixels; a cast shadow lowers the margin
    assert dark[words > 0].mean() > np.median(dark[paper > 0]) + 10
    # each word box against the paper right around it (shadow-proof): clearly darker
    others = cv2.dilate(words, np.ones((3, 3), np.uint8))
    for poly in item.polygons:
        one = np.zeros(dark.shape, np.uint8)
        cv2.fillPoly(one, [np.round(poly).astype(np.int32)], 1)
        ring = cv2.dilate(one, np.ones((7, 7), np.uint8)) & (1 - others)
        if ring.sum() >= 5:
            assert np.percentile(dark[one > 0], 90) > np.median(dark[ring > 0]) + 20


@pytest.mark.parametrize("text", ["Hello", "jumpy", "(12,500)", "TOTAL:", "i"])
def test_word_box_is_the_exact_ink_extent(text):
    """The box `draw_word` returns is where Pillow puts the ink when it draws the word
    at the same origin on its own."""
    font = synth.find_fonts().latin[0].get(17)
    ink = np.zeros((60, 160), np.uint8)
    box = draw_word(ink, Placed("word", text, font, x=20, y=40, size=17), 1.0)
    ref = Image.new("L", (160, 60), 0)
    ImageDraw.Draw(ref).text((20, 40), text, font=font, fill=255, anchor="ls")
    ys, xs = np.nonzero(np.asarray(ref))
    assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    ys, xs = np.nonzero(ink)
    assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_text_scale_prints_larger_words():
    def heights(scale):
        items = [synth.render(0, i, korean=False, text_scale=scale) for i in range(3)]  # default size
        return np.median([np.linalg.norm(p[3] - p[0]) for item in items for p in item.polygons])

    assert heights(1.8) > 1.2 * heights(1.0)


def test_no_korean_font(tmp_path, caplog):
    empty = tmp_path / "no_fonts"
    empty.mkdir()
    with pytest.raises(UserError, match="Hangul"):
        synth.generate(tmp_path / "x", num_images=1, korean=True, font_dirs=[empty], progress=False, **SIZE)
    caplog.set_level(logging.INFO, logger="hrnet_sweep.synth")
    for _ in range(2):  # Pillow's built-in font still renders, English only, without a word about it
        paths = synth.generate(tmp_path / "y", num_images=1, font_dirs=[empty], progress=False, **SIZE)
    assert len(load_annotations(paths["train"], strict=True)[synth.image_name(0)].words) > 0
    assert not [r for r in caplog.records if "Hangul" in r.getMessage()]
    # the note, where one is wanted (the demo says it once), names the folders searched that exist
    note = synth.korean_note([empty, tmp_path / "missing", "C:/Windows/Fonts"])
    assert "Hangul" in note and str(empty) in note and "Windows" not in note and "missing" not in note


def test_korean_receipts_where_a_font_exists():
    if not synth.find_fonts().korean:
        pytest.skip("no font with Hangul glyphs on this machine")
    items = [synth.render(0, i, korean=True, **SIZE) for i in range(8)]
    assert any(item.korean for item in items) and all(item.polygons for item in items)


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="add up to"):
        synth.generate(tmp_path, num_images=4, splits={"train": 3}, progress=False)
    with pytest.raises(UserError, match="num_images"):
        synth.generate(tmp_path, num_images=0, progress=False)
    with pytest.raises(UserError, match="text_scale"):
        synth.generate(tmp_path, num_images=1, text_scale=0, progress=False)
    with pytest.raises(UserError, match="width"):
        synth.generate(tmp_path, num_images=1, width=20, progress=False)
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        synth.main(["--out", str(tmp_path), "--size", "480"])


def test_cli(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["--out", str(out), "--num", "4", "--seed", "1", "--size", "256x320", "--no-korean", "--quiet"]
    assert synth.main(argv) == 0
    text = capsys.readouterr().out
    assert str(out / "train.json") in text and "4 images" in text
    assert len(_images(out)) == 4
    info = json.loads((out / synth.INFO_FILE).read_text(encoding="utf-8"))
    assert info["seed"] == 1 and info["width"] == 256 and info["splits"] == {"train": 2, "val": 1, "test": 1}
