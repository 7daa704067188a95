"""Image loading, letterbox and augmentation geometry, datasets and collate."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from hrnet_sweep.dbnet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAP_KEYS,
    DetectionDataset,
    _fit_polygons,
    build_transforms,
    collate,
    letterbox_size,
    read_image,
    to_network_input,
)
from hrnet_sweep.errors import ConfigError, DataError
from hrnet_sweep.formats import ImageAnnotation, Word, load_annotations

pytestmark = pytest.mark.unit

SROIE = Path(
    os.environ.get("HRNET_SWEEP_SROIE", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sroie-mini")
)
ONLY_GEOMETRY = dict(hflip=0.0, rotate_p=0.0, affine_p=0.0, color_p=0.0, noise_p=0.0, blur_p=0.0)


def _quad(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def _save(path: Path, rgb: np.ndarray, **kw) -> None:
    Image.fromarray(rgb).save(path, **kw)


def _red_mask(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 150) & (g < 100) & (b < 100)


# ----------------------------------------------------------------------------- read_image


def test_exif_orientation_applied_and_polygons_align(tmp_path):
    # The upright image as the annotator saw it: 80 high, 48 wide, a red word box.
    upright = np.full((80, 48, 3), 255, np.uint8)
    box = _quad(8, 50, 40, 70)
    upright[50:70, 8:40] = (220, 0, 0)
    # Stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view").
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(tmp_path / "r.jpg", stored, exif=exif, quality=95)
    assert Image.open(tmp_path / "r.jpg").size == (80, 48)  # raw: width 80, height 48

    img = read_image(tmp_path / "r.jpg")
    assert img.shape == (80, 48, 3) and img.dtype == np.uint8
    assert _red_mask(img)[52:68, 10:38].all()

    anns = {"r.jpg": ImageAnnotation("r.jpg", [Word("0001", box)])}
    ds = DetectionDataset(tmp_path, anns, ["r.jpg"], build_transforms(None, 160, 160, train=False))
    s = ds[0]
    assert s["image_size"] == (80, 48) and s["content_size"] == (160, 96)
    text = s["prob_map"].numpy() > 0.5
    assert text.sum() > 100
    assert _red_mask(s["image"].numpy())[text].mean() > 0.97


def test_grayscale_palette_rgba_16bit(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (7, 1))
    _save(tmp_path / "g.png", gray)
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0  # transparent: paper, white
    _save(tmp_path / "a.png", rgba)
    deep = np.arange(12, dtype=np.uint16).reshape(3, 4) * 257 * 20  # 16-bit values of 0..220 in 8-bit
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    deep_rgb = np.dstack([deep, deep // 2, deep // 4])
    cv2.imwrite(str(tmp_path / "drgb.png"), deep_rgb)  # BGR on disk

    g = read_image(tmp_path / "g.png")
    assert g.shape == (7, 25, 3) and g.dtype == np.uint8 and (g[..., 0] == gray).all() and (g[..., 2] == gray).all()
    assert read_image(tmp_path / "p.png").shape == (7, 25, 3)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (5, 6, 3) and tuple(a[0, 0]) == (255, 255, 255) and tuple(a[1, 1]) == (200, 0, 0)
    d = read_image(tmp_path / "d.png")
    assert d.shape == (3, 4, 3) and d.dtype == np.uint8
    np.testing.assert_array_equal(d[..., 0], np.arange(12).reshape(3, 4) * 20)
    drgb = read_image(tmp_path / "drgb.png")
    assert drgb.shape == (3, 4, 3) and drgb.dtype == np.uint8
    assert abs(int(drgb[2, 3, 0]) - 220 // 4) <= 1 and abs(int(drgb[2, 3, 2]) - 220) <= 1


def test_truncated_and_garbage_files_raise_dataerror_naming_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(DataError, match=name):
            read_image(tmp_path / name)


# ----------------------------------------------------------------------------- transforms


def test_to_network_input_matches_albumentations_normalize():
    import albumentations as A

    imgs = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    ref = np.stack(
        [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)(image=i)["image"].transpose(2, 0, 1) for i in imgs]
    )
    out = to_network_input(torch.from_numpy(imgs))
    assert out.shape == (2, 3, 37, 53) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    cl = to_network_input(torch.from_numpy(imgs), channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)
    with pytest.raises(ValueError, match="uint8"):
        to_network_input(torch.zeros(1, 3, 8, 8))


def test_letterbox_content_size_and_padding():
    img = np.full((100, 300, 3), 255, np.uint8)
    pipe = build_transforms(None, 128, 256, train=False)
    out, polys = pipe(img, [_quad(30, 10, 150, 50)])
    scale, (h, w) = letterbox_size(100, 300, 128, 256)
    assert (h, w) == (85, 256) and out.shape == (128, 256, 3) and out.dtype == np.uint8
    assert (out[:h] > 250).all()  # content top-left
    assert (out[h:] == 0).all()  # padding at the bottom, black before normalisation
    np.testing.assert_allclose(polys[0], _quad(30, 10, 150, 50) * scale, atol=1e-3)
    # A tall image pads on the right.
    _, (h2, w2) = letterbox_size(300, 100, 128, 256)
    out2, _ = pipe(np.full((300, 100, 3), 255, np.uint8), [])
    assert (h2, w2) == (128, 43) and (out2[:, :w2] > 250).all() and (out2[:, w2:] == 0).all()


@pytest.mark.parametrize(
    "aug",
    [
        dict(ONLY_GEOMETRY, rotate=10.0, rotate_p=1.0),
        dict(ONLY_GEOMETRY, affine_p=1.0, scale=(0.7, 1.3)),
        dict(ONLY_GEOMETRY, rotate=10.0, rotate_p=1.0, affine_p=1.0, hflip=1.0),
    ],
    ids=["rotate", "affine", "rotate+affine+hflip"],
)
def test_polygons_stay_aligned_under_augmentation(aug):
    # A slanted word rendered into the image must land where its transformed polygon says.
    poly = np.array([[60, 80], [200, 60], [206, 100], [66, 120]], np.float32)
    img = np.full((240, 320, 3), 255, np.uint8)
    cv2.fillPoly(img, [poly.round().astype(np.int32)], (220, 0, 0))
    pipe = build_transforms(aug, 256, 256, train=True)
    for seed in range(6):
        torch.manual_seed(seed)
        pipe._seeded_pid = None  # reseed from torch: a different draw per seed
        out, (moved,) = pipe(img, [poly])
        blob = _red_mask(out)
        drawn = np.zeros(blob.shape, np.uint8)
        cv2.fillPoly(drawn, [moved.round().astype(np.int32)], 1)
        iou = (blob & (drawn > 0)).sum() / (blob | (drawn > 0)).sum()
        assert iou > 0.9, (seed, iou)
    # ... and the augmentation did move it.
    assert not np.allclose(moved, poly * letterbox_size(240, 320, 256, 256)[0], atol=2)


def test_augmentation_reproducible_from_torch_seed_and_different_per_seed():
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    pipe = build_transforms(dict(rotate_p=1.0, affine_p=1.0), 64, 64, train=True)

    def draw(seed):
        torch.manual_seed(seed)
        pipe._seeded_pid = None
        return pipe(img, [_quad(10, 10, 40, 30)])[1][0]

    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.allclose(draw(1), draw(2))


def test_all_augmentations_on_keep_contract():
    img = np.random.default_rng(0).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    aug = dict(hflip=1.0, rotate=10.0, rotate_p=1.0, affine_p=1.0, color_p=1.0, noise_p=1.0, blur_p=1.0)
    pipe = build_transforms(aug, 96, 64, train=True)
    out, polys = pipe(img, [_quad(5, 5, 30, 20), _quad(-10, 50, 80, 70)])
    assert out.shape == (96, 64, 3) and out.dtype == np.uint8
    assert [p.shape for p in polys] == [(4, 2), (4, 2)]


def test_gray_noise_strength_and_reproducibility():
    import albumentations as A

    from hrnet_sweep.dbnet.data import _GrayNoise

    img = np.full((200, 100, 3), 128, np.uint8)
    a = A.Compose([_GrayNoise((0.04, 0.04), p=1.0)], seed=5)(image=img)["image"]
    b = A.Compose([_GrayNoise((0.04, 0.04), p=1.0)], seed=5)(image=img)["image"]
    np.testing.assert_array_equal(a, b)
    diff = a.astype(float) - 128
    assert abs(diff.std() - 0.04 * 255) < 1.0 and (diff[..., 0] == diff[..., 2]).all()


def test_bad_augment_config_names_key():
    with pytest.raises(ConfigError, match="data.augment.rotate_p"):
        build_transforms({"rotate_p": 2.0}, 64, 64, train=True)
    with pytest.raises(ConfigError, match="data.augment.rotat"):
        build_transforms({"rotat": 5.0}, 64, 64, train=True)


def test_fit_polygons_ignores_degenerate_and_mostly_outside():
    inside, half_out, outside = _quad(10, 10, 30, 20), _quad(-30, 10, 10, 20), _quad(-50, -50, -10, -10)
    nan = _quad(0, 0, 5, 5)
    nan[0, 0] = np.nan
    line = np.array([[5, 5], [20, 5], [40, 5]], np.float32)
    polys, ignore = _fit_polygons([inside, half_out, outside, nan, line], 64, 64)
    assert len(polys) == 4 and ignore == [False, True, True, True]
    assert all((p >= 0).all() and (p <= 63).all() for p in polys)


# ----------------------------------------------------------------------------- datasets


@pytest.fixture
def folder(tmp_path):
    """Three 60x90 white JPEGs with a black word each and a broken one; annotations."""
    anns = {}
    for i in range(3):
        img = np.full((60, 90, 3), 255, np.uint8)
        img[20:35, 10 + 10 * i : 60 + 10 * i] = 0
        _save(tmp_path / f"{i}.jpg", img, quality=95)
        anns[f"{i}.jpg"] = ImageAnnotation(f"{i}.jpg", [Word("0001", _quad(10 + 10 * i, 20, 60 + 10 * i, 35))])
    return tmp_path, anns


def test_dataset_sample_contract(folder):
    root, anns = folder
    ds = DetectionDataset(root, anns, list(anns), build_transforms(None, 96, 128, train=True))
    s = ds[1]
    # Compact samples: uint8 image and 0/1 maps, float32 only where values need it.
    assert s["image"].shape == (96, 128, 3) and s["image"].dtype == torch.uint8
    for key in MAP_KEYS:
        dtype = torch.float32 if key == "thresh_map" else torch.uint8
        assert s[key].shape == (96, 128) and s[key].dtype == dtype, key
    assert set(s["prob_map"].unique().tolist()) <= {0, 1} and s["prob_map"].sum() > 0
    assert s["name"] == "1.jpg" and s["image_size"] == (60, 90) and s["content_size"] == (85, 128)
    np.testing.assert_array_equal(s["polygons"][0], _quad(20, 20, 70, 35))
    batch = collate([ds[0], ds[2]])
    assert batch["image"].shape == (2, 96, 128, 3) and batch["prob_map"].shape == (2, 96, 128)
    assert batch["name"] == ["0.jpg", "2.jpg"] and batch["image_size"] == [(60, 90), (60, 90)]
    assert isinstance(batch["polygons"], list) and len(batch["polygons"][0]) == 1


def test_missing_file_fails_at_construction_naming_it(folder):
    root, anns = folder
    anns["gone.jpg"] = ImageAnnotation("gone.jpg", [])
    with pytest.raises(DataError, match="gone.jpg"):
        DetectionDataset(root, anns, list(anns), build_transforms(None, 64, 64, train=False))
    with pytest.raises(DataError, match="nope.jpg"):
        DetectionDataset(root, anns, ["0.jpg", "nope.jpg"], build_transforms(None, 64, 64, train=False))


def test_unreadable_content_warns_with_name_and_substitutes(folder, caplog):
    root, anns = folder
    noise = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG")
    (root / "1.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header fine, content cut
    ds = DetectionDataset(root, anns, list(anns), build_transforms(None, 64, 64, train=False))
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.data"):
        assert ds[1]["name"] == "2.jpg"
        assert ds[1]["name"] == "2.jpg"
    assert ds.bad_files == {"1.jpg"}
    assert sum("1.jpg" in r.getMessage() for r in caplog.records) == 1  # once per file


def test_out_of_image_points_are_clamped(folder):
    root, anns = folder
    anns["0.jpg"] = ImageAnnotation(
        "0.jpg", [Word("0001", _quad(-15, -4, 200, 30)), Word("0002", _quad(5, 40, 50, 80))]
    )
    ds = DetectionDataset(root, anns, ["0.jpg"], build_transforms(None, 64, 96, train=False))
    s = ds[0]
    for p in s["polygons"]:
        assert (p >= 0).all() and (p[:, 0] <= 89).all() and (p[:, 1] <= 59).all()
    np.testing.assert_array_equal(s["polygons"][0], _quad(0, 0, 89, 30))
    assert all(torch.isfinite(s[k].float()).all() for k in MAP_KEYS)


def test_zero_area_word_is_ground_truth_but_not_a_target(folder):
    # the metric scores a word on a line as the competition does; it has no inside to learn
    root, anns = folder
    word = Word("0001", _quad(10, 20, 60, 35).astype(np.float64))
    flat = Word("0002", np.array([[5, 50], [30, 50], [55, 50], [80, 50]], np.float64))
    transforms = build_transforms(None, 64, 96, train=False)
    with_flat = DetectionDataset(root, {"0.jpg": ImageAnnotation("0.jpg", [word, flat])}, ["0.jpg"], transforms)[0]
    without = DetectionDataset(root, {"0.jpg": ImageAnnotation("0.jpg", [word])}, ["0.jpg"], transforms)[0]
    assert [p.tolist() for p in with_flat["polygons"]] == [word.points.tolist(), flat.points.tolist()]
    assert with_flat["polygons"][0].dtype == np.float64  # GT keeps its precision for the metric's rounding
    for key in MAP_KEYS:
        assert torch.equal(with_flat[key], without[key]), key


def test_image_without_words_gives_zero_targets(folder):
    root, anns = folder
    anns["0.jpg"] = ImageAnnotation("0.jpg", [])
    s = DetectionDataset(root, anns, ["0.jpg"], build_transforms(None, 64, 96, train=True))[0]
    assert s["prob_map"].sum() == 0 and s["thresh_mask"].sum() == 0 and s["polygons"] == []


def test_workers_draw_different_augmentations(folder):
    root, anns = folder
    names = ["0.jpg"] * 4  # the same image four times: any difference is augmentation
    ds = DetectionDataset(root, anns, names, build_transforms(dict(rotate_p=1.0, affine_p=1.0), 64, 96, train=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate)
    images = [b["image"][0] for b in loader]
    assert not torch.equal(images[0], images[1])  # worker 0 and worker 1


@pytest.mark.skipif(not (SROIE / "train.json").is_file(), reason=f"sroie-mini not found at {SROIE}")
def test_sroie_mini_sample():
    anns = load_annotations(SROIE / "train.json")
    names = sorted(anns)[:2]
    ds = DetectionDataset(SROIE / "images", anns, names, build_transforms(None, 640, 640, train=True))
    s = ds[0]
    h0, w0 = s["image_size"]
    assert max(s["content_size"]) == 640 and len(s["polygons"]) == len(anns[names[0]].words) > 0
    assert s["prob_map"].sum() > 0 and s["prob_mask"].min() >= 0
    doc = json.loads((SROIE / "train.json").read_text())["images"][names[0]]
    assert (doc.get("img_h", h0), doc.get("img_w", w0)) == (h0, w0)
