"""Ensemble and TTA bookkeeping, out-of-fold map cache, and `predict` routing from a
preset / retrain folder to its fold checkpoints and tuned post-processing.

Checkpoints here are built from randomly initialised tiny DBNets (no training): the
properties tested hold for any weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from hrnet_sweep.config import load_config
from hrnet_sweep.dbnet import inference as predict
from hrnet_sweep.dbnet.data import letterbox_size
from hrnet_sweep.errors import UserError
from hrnet_sweep.formats import read_submission
from hrnet_sweep.pipeline import ensemble
from hrnet_sweep.pipeline import predict as predict_cmd

TINY = ["data.image_height=64", "data.image_width=64", "models.decoder.inner_channels=16"]


def tiny_cfg(*extra):
    return load_config(["preset=hrnet_w18_small_cpu", *TINY, *extra])


def make_ckpt(path: Path, cfg, seed: int) -> Path:
    from hrnet_sweep.dbnet.model import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # a livelier map than the -2 prior bias, so there is something to detect
        model.prob_head[-1].bias.fill_(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "hyper_parameters": {"config": cfg.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (h, w) in enumerate([(80, 50), (40, 90), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"t{i}.png")
    return d


# ----------------------------------------------------------------------------- ensemble and TTA


@pytest.mark.model
def test_ensemble_of_identical_models_equals_the_single_model(tmp_path, images):
    cfg = tiny_cfg()
    a = make_ckpt(tmp_path / "a.ckpt", cfg, 0)
    b = tmp_path / "b.ckpt"
    shutil.copy(a, b)
    m = [predict.load_checkpoint(a), predict.load_checkpoint(b)]
    single = dict(predict.probability_maps(m[:1], images, progress=False))
    double = dict(predict.probability_maps(m, images, progress=False))
    weighted = dict(predict.probability_maps(m, images, weights=[0.2, 0.8], progress=False))
    for name in single:
        assert double[name].image_size == single[name].image_size
        np.testing.assert_allclose(double[name].prob, single[name].prob, rtol=0, atol=1e-6)
        np.testing.assert_allclose(weighted[name].prob, single[name].prob, rtol=0, atol=1e-6)
    pp = cfg.models.postprocess.model_copy(update={"thresh": 0.5, "box_thresh": 0.5})
    p1 = predict.predict([a], images, postprocess=pp, progress=False)
    p2 = predict.predict([a, b], images, postprocess=pp, progress=False)
    assert sum(len(v) for v in p1.values()) > 0
    for name in p1:
        assert [p.tolist() for p, _ in p1[name]] == [p.tolist() for p, _ in p2[name]]


class _Pointwise(torch.nn.Module):
    """A flip-equivariant test double: each output pixel depends on its input pixel only."""

    def predict_prob(self, x):
        return torch.sigmoid(x.mean(1) * 3)


@pytest.mark.model
def test_flip_tta_bookkeeping_with_a_flip_equivariant_model(images):
    lm = predict.LoadedModel(_Pointwise(), tiny_cfg(), "pointwise")
    for name in ("t0.png", "t1.png"):  # letterboxed: padding at the right, then at the bottom
        ((_, plain),) = predict.probability_maps([lm], images, [name], progress=False)
        ((_, tta),) = predict.probability_maps([lm], images, [name], tta_flip=True, progress=False)
        plain, tta = plain.prob, tta.prob
        np.testing.assert_allclose(tta, plain, rtol=0, atol=1e-6)
        assert not np.allclose(plain, plain[:, ::-1], atol=1e-3)  # a missing flip-back would show


@pytest.mark.model
def test_flip_tta_on_symmetric_and_mirrored_images(tmp_path):
    cfg = tiny_cfg()
    lm = predict.load_checkpoint(make_ckpt(tmp_path / "m.ckpt", cfg, 1))
    rng = np.random.default_rng(1)
    half = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(d / "sym.png")  # fills the input
    tall = rng.integers(0, 255, (96, 40, 3), dtype=np.uint8)  # letterboxed, padding at the right
    Image.fromarray(tall).save(d / "tall.png")
    Image.fromarray(np.ascontiguousarray(tall[:, ::-1])).save(d / "tall_mirror.png")
    plain = {n: m.prob for n, m in predict.probability_maps([lm], d, progress=False)}
    tta = {n: m.prob for n, m in predict.probability_maps([lm], d, tta_flip=True, progress=False)}
    # a symmetric image: the TTA map is symmetric, the plain one (asymmetric kernels) is not
    np.testing.assert_allclose(tta["sym.png"], tta["sym.png"][:, ::-1], rtol=0, atol=1e-6)
    assert not np.allclose(plain["sym.png"], plain["sym.png"][:, ::-1], atol=1e-4)
    # a mirrored image gets the mirrored TTA map
    np.testing.assert_allclose(tta["tall_mirror.png"], tta["tall.png"][:, ::-1], rtol=0, atol=1e-4)


def test_maps_of_another_input_size_average_in_the_first_models_frame():
    rng = np.random.default_rng(0)
    a = rng.random((4, 6)).astype(np.float32)
    b = np.kron(rng.random((4, 6)), np.ones((2, 2))).astype(np.float32)  # twice the resolution
    pm = predict.average_maps([a, b], (40, 60), predict.normalized_weights([1, 3], 2))
    assert pm.prob.shape == (4, 6) and pm.prob.dtype == np.float32 and pm.image_size == (40, 60)
    resized = cv2.resize(b, (6, 4), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(pm.prob, 0.25 * a + 0.75 * resized, rtol=0, atol=1e-6)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [float("nan"), 1.0]])
def test_ensemble_weights_are_checked(weights):
    with pytest.raises(UserError, match="--weights"):
        predict.normalized_weights(weights, 2)


@pytest.mark.model
def test_fold_and_ensemble_maps_run_each_model_once(tmp_path, images):
    cfg = tiny_cfg()
    models = [predict.load_checkpoint(make_ckpt(tmp_path / f"{i}.ckpt", cfg, i)) for i in range(2)]
    joint = dict(predict.probability_maps(models, images, progress=False))
    for name, per_fold, ens in ensemble.fold_and_ensemble_maps(models, images):
        assert len(per_fold) == 2 and ens.image_size == joint[name].image_size == per_fold[0].image_size
        np.testing.assert_allclose(ens.prob, joint[name].prob, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ens.prob, (per_fold[0].prob + per_fold[1].prob) / 2, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- retrain: OOF cache, tuning, predict


def fake_retrain(tmp_path: Path, data: Path, preset: str | None = None) -> Path:
    """A retrain folder as `kfold` leaves it (summary, manifest, fold checkpoints), without training."""
    from hrnet_sweep.folds import assign_folds, word_counts, write_manifest
    from hrnet_sweep.formats import load_annotations

    root = tmp_path / "rt"
    overrides = [f"data.root={data}", *TINY, "data.num_folds=2"]
    cfg = load_config([f"preset={preset or 'hrnet_w18_small_cpu'}", *overrides])
    ann = load_annotations(data / "train.json")
    counts = word_counts(ann)
    write_manifest(
        root / "folds.json", data / "train.json", assign_folds(list(counts), list(counts.values()), 2, 42), 2, 42
    )
    folds = {}
    for k in range(2):
        ckpt = make_ckpt(root / f"fold{k}" / "checkpoints" / "best-00.ckpt", cfg, k)
        folds[str(k)] = {
            "fold": k,
            "state": "finished",
            "best": 0.1 * (k + 1),
            "best_epoch": 0,
            "best_ckpt": str(ckpt.relative_to(root)),
            "run_dir": f"fold{k}",
        }
    (root / "kfold_summary.json").write_text(
        json.dumps(
            {
                "version": 1,
                "retrain": "rt",
                "preset": preset or "hrnet_w18_small_cpu",
                "overrides": overrides,
                "num_folds": 2,
                "fold_seed": 42,
                "manifest": "folds.json",
                "folds": folds,
            }
        )
    )
    return root


@pytest.mark.integration
def test_oof_cache_tune_and_predict_from_the_preset(tmp_path, synth_data, capsys):
    from hrnet_sweep.pipeline import tune

    preset = tmp_path / "best.yaml"
    preset.write_text("# provenance (hrnet_sweep best):\n#   sweep: demo\nbase: hrnet_w18_small_cpu\n")
    root = fake_retrain(tmp_path, synth_data, str(preset.resolve()))

    target = ensemble.resolve_retrain(root)
    cache = ensemble.cache_oof_maps(target, progress=False)
    n_train = len(json.loads((synth_data / "train.json").read_text())["images"])
    assert len(cache.paths) == n_train and cache.folds == [0, 1]
    some = next(iter(cache.paths))
    png = np.asarray(Image.open(cache.paths[some]))
    # the frame prediction post-processes: the letterboxed content at network resolution
    cfg = target.cfg.data
    assert png.dtype == np.uint8 and cache.sizes[some] == (640, 480)
    assert png.shape == letterbox_size(640, 480, cfg.image_height, cfg.image_width)[1]
    stamps = {n: Path(p).stat().st_mtime_ns for n, p in cache.paths.items()}
    again = ensemble.cache_oof_maps(target, progress=False)
    assert {n: Path(p).stat().st_mtime_ns for n, p in again.paths.items()} == stamps  # not recomputed

    assert (
        tune.main(
            [
                str(root),
                "--grid",
                "thresh=0.5,0.6",
                "box_thresh=0.5",
                "unclip_ratio=1.5",
                "mode=box",
                "--no-refine",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "out-of-fold" in out and f"wrote {preset.resolve()}" in out
    pp = load_config([f"preset={preset}"]).models.postprocess
    assert pp.use_polygon is False and pp.box_thresh == 0.5 and pp.thresh in (0.5, 0.6)
    summary = json.loads((root / "kfold_summary.json").read_text())
    assert summary["postprocess"]["best"]["use_polygon"] is False
    assert "# provenance (hrnet_sweep best):" in preset.read_text()

    # predict from the retrain folder: both folds, the tuned post-processing, a valid CSV
    test_images = synth_data / "images"
    csv = tmp_path / "sub.csv"
    rc = predict_cmd.main(
        [str(root), "--images", str(test_images), "--out", str(csv), "--gt", str(synth_data / "test.json")]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "folds [0, 1]" in out and "box mode" in out and f"thresh {pp.thresh}" in out
    assert "submission check: valid" in out and "H-Mean" in out
    assert len(read_submission(csv)) == len(list(test_images.glob("*.jpg")))
    assert csv.with_suffix(".json").is_file()
    # one fold only
    rc = predict_cmd.main(
        [str(root / "kfold_summary.json"), "--images", str(test_images), "--out", str(csv), "--folds", "1"]
    )
    assert rc == 0 and "folds [1]" in capsys.readouterr().out


@pytest.mark.integration
def test_predict_routing_shipped_preset_and_plain_checkpoints(tmp_path, synth_data, capsys, monkeypatch):
    root = fake_retrain(tmp_path, synth_data)
    summary = json.loads((root / "kfold_summary.json").read_text())
    summary["postprocess"] = {"best": {"thresh": 0.55, "box_thresh": 0.45, "unclip_ratio": 1.9, "use_polygon": True}}
    (root / "kfold_summary.json").write_text(json.dumps(summary))
    target = ensemble.resolve_retrain(root)
    pp = target.cfg.models.postprocess
    assert (pp.thresh, pp.box_thresh, pp.unclip_ratio) == (0.55, 0.45, 1.9)
    assert [k for k, _, _ in target.finished_folds()] == [0, 1]
    # a shipped preset finds its retrain at <output_dir>/<name>-kfold
    monkeypatch.chdir(tmp_path)
    shutil.move(str(root), tmp_path / "outputs" / "hrnet_w18_small_cpu-kfold")
    assert ensemble.resolve_retrain("hrnet_w18_small_cpu").root.name == "hrnet_w18_small_cpu-kfold"
    with pytest.raises(UserError, match="no k-fold retrain found"):
        ensemble.resolve_retrain("resnet18")
    # .ckpt arguments are predicted with the post-processing stored in the checkpoint
    ckpt = tmp_path / "outputs" / "hrnet_w18_small_cpu-kfold" / "fold0" / "checkpoints" / "best-00.ckpt"
    csv = tmp_path / "c.csv"
    assert predict_cmd.main([str(ckpt), "--images", str(synth_data / "images"), "--out", str(csv)]) == 0
    assert csv.is_file()
