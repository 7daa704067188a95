"""Tuned validation: the search's logged H-Mean is its setting's H-Mean on the same maps and
never below the fixed setting's; the worker pool equals the in-process search; the
checkpoint's setting is what `predict` uses; a tiny training logs the rows, the
checkpoint entry and the validation images (TensorBoard, W&B offline); with
`tune_on_val=false` it logs what the fixed post-processing gives; a training whose search
worker is SIGKILLed finishes (the budget and the worker faults themselves:
`test_search_faults.py`)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_tune import constructed_map

from hrnet_sweep.config import PostprocessConfig, load_config
from hrnet_sweep.constants import METRIC, VAL_PRECISION, VAL_RECALL
from hrnet_sweep.dbnet.lit import VAL_HMEAN_FIXED, VAL_PP_KEYS
from hrnet_sweep.dbnet.postprocess import detect
from hrnet_sweep.dbnet.validation import (
    CHECKPOINT_KEY,
    PARAMS,
    Grid,
    Setting,
    ValidationSearch,
    draw_detections,
)
from hrnet_sweep.metric import evaluate

PP = PostprocessConfig(thresh=0.3, box_thresh=0.4, unclip_ratio=1.5, use_polygon=True, min_size=3)
SMALL = Grid(thresh=(0.3, 0.5), box_thresh=(0.5, 0.7), unclip_ratio=(1.5, 2.0), use_polygon=(True, False))


def _val_items(n: int = 4) -> tuple[list[tuple], dict]:
    """Validation items as the module sends them: uint8 maps at half the image size."""
    items, gts = [], {}
    for i in range(n):
        prob, gt = constructed_map(i)
        items.append((np.rint(prob[::2, ::2] * 255).astype(np.uint8), prob.shape, gt))
        gts[f"im{i}"] = gt
    return items, gts


def _metric_at(items, gts, pp) -> float:
    preds = {name: detect(m, pp, image_size=size)[0] for name, (m, size, _) in zip(gts, items)}
    return evaluate(gts, preds).hmean


# ----------------------------------------------------------------------------- the search


@pytest.mark.unit
def test_logged_hmean_is_the_metric_of_the_logged_setting_and_beats_the_fixed():
    items, gts = _val_items()
    search = ValidationSearch(PP, workers=0, grid=SMALL)
    search.begin_epoch()
    search.add(items[:3])  # as validation batches arrive
    search.add(items[3:])
    result = search.finish()
    assert result.best["hmean"] == pytest.approx(_metric_at(items, gts, result.postprocess(PP)), abs=1e-12)
    assert result.fixed["hmean"] == pytest.approx(_metric_at(items, gts, PP), abs=1e-12)
    assert Setting.of(result.fixed) == Setting.of(PP)  # off the grid: added to it
    assert result.best["hmean"] >= result.fixed["hmean"]
    assert result.best["hmean"] > 0.9 and (result.best["thresh"], result.best["box_thresh"]) == (0.5, 0.7)
    assert {r["stage"] for r in result.table} == {"coarse", "refine"}
    assert result.table[0] == result.best


@pytest.mark.unit
def test_worker_pool_equals_the_in_process_search():
    items, _ = _val_items(3)
    results = []
    for workers in (0, 1):
        search = ValidationSearch(PP, workers=workers, grid=SMALL)
        try:
            for _ in range(2):  # two epochs on one pool
                search.begin_epoch()
                search.add(items[:2])
                search.add(items[2:])
                results.append(search.finish())
        finally:
            search.close()
    serial, pooled = results[0], results[2]
    assert [r["hmean"] for r in pooled.table] == pytest.approx([r["hmean"] for r in serial.table], abs=1e-12)
    assert [Setting.of(r) for r in pooled.table] == [Setting.of(r) for r in serial.table]
    assert results[1].best == results[3].best == serial.best


@pytest.mark.unit
def test_draw_detections_shrinks_the_image_and_draws_both():
    image = np.full((800, 400, 3), 255, np.uint8)
    gt = [np.array([[40, 40], [360, 40], [360, 120], [40, 120]], np.float32)]
    pred = [np.array([[40, 400], [360, 400], [360, 480], [40, 480]], np.float32)]
    out = draw_detections(image, gt, pred, max_side=200)
    assert out.shape == (200, 100, 3) and out.dtype == np.uint8
    assert (out[10, 10:90] == (0, 200, 0)).all(axis=1).any()  # the GT's top edge, scaled by 1/4
    assert (out[100, 10:90] == (255, 0, 0)).all(axis=1).any()  # the detection's
    assert image.min() == 255  # the input is not drawn on


# ----------------------------------------------------------------------------- checkpoint -> predict


def _checkpoint(path: Path, tuned: dict | None) -> Path:
    from hrnet_sweep.dbnet.model import build_model

    cfg = load_config(
        [
            "preset=hrnet_w18_small_cpu",
            "data.image_height=64",
            "data.image_width=64",
            "models.decoder.inner_channels=16",
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a livelier map than the -2 prior bias, so there is something to detect
        model.prob_head[-1].bias.fill_(0.5)
    ckpt = {
        "hyper_parameters": {"config": cfg.to_dict()},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    if tuned:
        ckpt[CHECKPOINT_KEY] = tuned
    torch.save(ckpt, path)
    return path


@pytest.mark.model
def test_the_checkpoints_setting_is_what_predict_uses(tmp_path, capsys):
    from hrnet_sweep.dbnet import inference
    from hrnet_sweep.pipeline import predict as predict_cmd

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(80, 50), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"t{i}.png")
    tuned = {"thresh": 0.55, "box_thresh": 0.45, "unclip_ratio": 1.9, "use_polygon": False, "hmean": 0.5, "epoch": 3}
    ckpt = _checkpoint(tmp_path / "tuned.ckpt", tuned)
    plain = _checkpoint(tmp_path / "plain.ckpt", None)

    lm = inference.load_checkpoint(ckpt)
    assert {k: getattr(lm.cfg.models.postprocess, k) for k in PARAMS} == {k: tuned[k] for k in PARAMS}
    assert lm.tuned_postprocess == tuned
    assert (
        inference.load_checkpoint(plain).cfg.models.postprocess
        == load_config(["preset=hrnet_w18_small_cpu"]).models.postprocess
    )
    by_default = inference.predict([ckpt], images, progress=False)
    explicit = inference.predict([plain], images, postprocess=lm.cfg.models.postprocess, progress=False)
    assert sum(map(len, by_default.values())) > 0
    assert {n: [p.tolist() for p, _ in v] for n, v in by_default.items()} == {
        n: [p.tolist() for p, _ in v] for n, v in explicit.items()
    }

    assert predict_cmd.main([str(ckpt), "--images", str(images), "--out", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "box mode, thresh 0.55, box_thresh 0.45, unclip_ratio 1.9" in out
    assert (
        predict_cmd.main(
            [
                str(ckpt),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "b.csv"),
                "--set",
                "models.postprocess.box_thresh=0.6",
            ]
        )
        == 0
    )
    assert "thresh 0.55, box_thresh 0.6, unclip_ratio 1.9" in capsys.readouterr().out  # --set says otherwise


# ----------------------------------------------------------------------------- a tiny training

TINY = [
    "preset=hrnet_w18_small_cpu",
    "data.image_height=128",
    "data.image_width=128",
    "data.batch_size=4",
    "data.num_workers=0",
    "models.decoder.inner_channels=32",
    "trainer.progress_bar=false",
    "data.num_folds=4",
    "data.fold=0",
    "callbacks.early_stopping.enabled=false",
]


@pytest.fixture
def lively(tmp_path) -> list[str]:
    """Overrides that start training from weights whose maps have something to detect
    (prob bias 0 instead of the -2 prior) and barely move them: H-Mean above 0."""
    from hrnet_sweep.dbnet.model import build_model

    torch.manual_seed(0)
    model = build_model(load_config(TINY))
    with torch.no_grad():
        model.prob_head[-1].bias.fill_(0.0)
    path = tmp_path / "init.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return [f"ckpt_path={path}", "models.optimizer.lr=1e-7"]


def _hmean_at_prediction(ckpt: Path, cfg) -> float:
    """H-Mean of `predict`'s path (maps, the checkpoint's post-processing) on the run's
    validation images."""
    from hrnet_sweep.dbnet.inference import load_checkpoint, postprocess_map, probability_maps
    from hrnet_sweep.pipeline.train import build_datasets

    lm = load_checkpoint(ckpt)
    _, val_ds = build_datasets(cfg)
    gts = {s["name"]: s["polygons"] for s in map(val_ds.__getitem__, range(len(val_ds)))}
    images = cfg.data.resolved_root() / cfg.data.train_images
    maps = probability_maps([lm], images, sorted(gts), progress=False)
    return evaluate(gts, {n: postprocess_map(m, lm.cfg.models.postprocess)[0] for n, m in maps}).hmean


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_tuned_validation_rows_checkpoint_and_images(synth_data, tmp_path, monkeypatch, lively):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hrnet_sweep.pipeline.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen: list[list[tuple]] = []
    begin, add = ValidationSearch.begin_epoch, ValidationSearch.add
    monkeypatch.setattr(ValidationSearch, "begin_epoch", lambda self: (seen.append([]), begin(self))[1])
    monkeypatch.setattr(ValidationSearch, "add", lambda self, items: (seen[-1].extend(items), add(self, items))[1])
    cfg = load_config(
        [
            *TINY,
            f"data.root={synth_data}",
            f"output_dir={tmp_path}",
            "run_name=tuned",
            "trainer.max_epochs=2",
            "wandb=true",
            "logging.tensorboard=true",
            "logging.val_images=2",
            "models.postprocess.tune_workers=1",
            *lively,
        ]
    )
    res = run(cfg)
    assert res.state == "finished", res.reason
    run_dir = tmp_path / "tuned"
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1] and len(seen) == 2
    pp = cfg.models.postprocess
    assert max(r[METRIC] for r in rows) > max(r[VAL_HMEAN_FIXED] for r in rows)  # the search found better
    for row, items in zip(rows, seen):
        assert {METRIC, VAL_PRECISION, VAL_RECALL, VAL_HMEAN_FIXED, *VAL_PP_KEYS.values()} <= set(row)
        assert row[METRIC] >= row[VAL_HMEAN_FIXED]
        chosen = pp.model_copy(
            update={k: row[key] if k != "use_polygon" else bool(row[key]) for k, key in VAL_PP_KEYS.items()}
        )
        gts = {f"{i}": gt for i, (_, _, gt) in enumerate(items)}
        assert row[METRIC] == pytest.approx(_metric_at(items, gts, chosen), abs=1e-9)
        assert row[VAL_HMEAN_FIXED] == pytest.approx(_metric_at(items, gts, pp), abs=1e-9)
    stored = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[CHECKPOINT_KEY]
    assert stored["epoch"] == 1 and stored["hmean"] == rows[1][METRIC]
    assert [stored[k] for k in VAL_PP_KEYS] == [rows[1][key] for key in VAL_PP_KEYS.values()]
    # `predict` with that checkpoint (its saved setting) scores what validation logged
    last = run_dir / "checkpoints" / "last.ckpt"
    assert rows[1][METRIC] == pytest.approx(_hmean_at_prediction(last, cfg), abs=1e-9)

    events = EventAccumulator(str(run_dir / "logs"), size_guidance={"images": 0})
    events.Reload()
    tags = [t for t in events.Tags()["images"] if t.startswith("val/predictions/")]
    assert len(tags) == 2 and all(len(events.Images(t)) == 2 for t in tags)  # two images, each epoch
    media = list((run_dir / "wandb").glob("offline-run-*/files/media/images/val/predictions_*.png"))
    assert len(media) == 4


@pytest.mark.integration
def test_fixed_validation_logs_the_fixed_postprocessing(synth_data, tmp_path, lively):
    from hrnet_sweep.pipeline.train import run

    cfg = load_config(
        [
            *TINY,
            f"data.root={synth_data}",
            f"output_dir={tmp_path}",
            "run_name=fixed",
            "trainer.max_epochs=1",
            "logging.tensorboard=false",
            "models.postprocess.tune_on_val=false",
            *lively,
            "models.postprocess.thresh=0.5",
            "models.postprocess.box_thresh=0.5",
            "models.postprocess.unclip_ratio=2.25",
            "models.postprocess.use_polygon=false",
        ]
    )
    res = run(cfg)
    assert res.state == "finished", res.reason
    (row,) = _rows(tmp_path / "fixed")
    assert set(row) == {"epoch", "step", "time", METRIC, VAL_PRECISION, VAL_RECALL}
    last = tmp_path / "fixed" / "checkpoints" / "last.ckpt"
    assert CHECKPOINT_KEY not in torch.load(last, map_location="cpu", weights_only=False)
    # what `predict` gives with this checkpoint on the validation images (the fixed setting)
    assert row[METRIC] > 0 and row[METRIC] == pytest.approx(_hmean_at_prediction(last, cfg), abs=1e-9)


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_search_worker_killed_or_stuck_during_training_the_run_finishes(
    synth_data, tmp_path, caplog, monkeypatch, lively, sig
):
    """Issue 20's example (SIGKILL): the next validation's hand-over raised BrokenProcessPool
    and the training failed with a traceback. A stopped worker (SIGSTOP: alive, never
    answering) kept the validation waiting for ever; now the epoch's budget cuts it."""
    import pytorch_lightning as pl
    from test_search_faults import _wait_gone

    from _util import pid_alive
    from hrnet_sweep.pipeline.train import run

    hit: list[int] = []
    seen: list[list[tuple]] = []

    class Signal(pl.Callback):
        """`sig` to the search worker in the middle of the second training epoch."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and not hit:
                (pid,) = pl_module._searcher().worker_pids()
                os.kill(pid, sig)
                if sig == signal.SIGKILL:
                    _wait_gone(pid)
                else:  # a search that waits without a bound would hang the test: wake the worker then
                    wake = threading.Timer(90, _continue, (pid,))
                    wake.daemon = True
                    wake.start()
                hit.append(pid)

    begin, add = ValidationSearch.begin_epoch, ValidationSearch.add  # what each epoch's search was given
    monkeypatch.setattr(ValidationSearch, "begin_epoch", lambda self: (seen.append([]), begin(self))[1])
    monkeypatch.setattr(ValidationSearch, "add", lambda self, items: (seen[-1].extend(items), add(self, items))[1])
    cfg = load_config(
        [
            *TINY,
            f"data.root={synth_data}",
            f"output_dir={tmp_path}",
            "run_name=worker",
            "trainer.max_epochs=2",
            "logging.tensorboard=false",
            "models.postprocess.tune_workers=1",
            *lively,
        ]
    )
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.dbnet.validation"):
        res = run(cfg, extra_callbacks=[Signal()])
    assert hit and res.state == "finished" and res.exit_code == 0, res.reason
    rows = _rows(tmp_path / "worker")
    assert [r["epoch"] for r in rows] == [0, 1]
    row, items = rows[1], seen[1]
    gts = {f"{i}": gt for i, (_, _, gt) in enumerate(items)}
    pp = cfg.models.postprocess
    assert row[VAL_HMEAN_FIXED] == pytest.approx(_metric_at(items, gts, pp), abs=1e-9)
    if sig == signal.SIGKILL:  # the search went on in the training process: the whole search
        assert "post-processing search worker failed (a worker process died" in caplog.text
        chosen = pp.model_copy(
            update={k: row[key] if k != "use_polygon" else bool(row[key]) for k, key in VAL_PP_KEYS.items()}
        )
        assert row[METRIC] == pytest.approx(_metric_at(items, gts, chosen), abs=1e-9)
    else:  # cut at the epoch's budget: the fixed setting, scored in the training process
        assert re.search(
            r"post-processing search cut at its budget of \d+\.\d s \(models\.postprocess\.tune_budget=0\.25 "
            r"of a \d+\.\d s training epoch, at least 2 s\): 1 of 37 coarse settings scored on all \d+ images",
            caplog.text,
        ), caplog.text
        assert row[METRIC] == row[VAL_HMEAN_FIXED]
        _wait_gone(hit[0])  # the stuck worker was killed
        assert not pid_alive(hit[0])


def _children() -> list[int]:
    """The pids of this process's children (Linux /proc)."""
    out = []
    for task in Path("/proc/self/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


@pytest.mark.integration
def test_a_data_worker_killed_during_training_the_run_goes_on_without_workers(synth_data, tmp_path, caplog):
    """A DataLoader worker SIGKILLed mid-epoch: Lightning raised `RuntimeError: DataLoader
    worker (pid N) is killed by signal` and the run failed with a traceback. Now one
    warning, and the run resumes from its last finished epoch with data.num_workers=0."""
    import pytorch_lightning as pl

    from hrnet_sweep.pipeline.train import run

    hit: list[int] = []

    class KillWorker(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            # children from before the run (a W&B service an earlier test left) are not ours
            self.before = set(_children())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and not hit:
                pids = [p for p in _children() if p not in self.before]  # the loader's worker
                assert pids, "the training loader runs a worker process"
                os.kill(pids[0], signal.SIGKILL)
                hit.append(pids[0])

    cfg = load_config(
        [
            *(a for a in TINY if a != "data.num_workers=0"),
            "data.num_workers=1",
            f"data.root={synth_data}",
            f"output_dir={tmp_path}",
            "run_name=dataworker",
            "trainer.max_epochs=3",
            "logging.tensorboard=false",
            "data.persistent_workers=false",
            "models.postprocess.tune_on_val=false",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="hrnet_sweep.pipeline.train"):
        res = run(cfg, extra_callbacks=[KillWorker()])
    assert hit and res.state == "finished" and res.exit_code == 0, res.reason
    assert "DataLoader worker" in caplog.text and "data.num_workers=0" in caplog.text
    assert [r["epoch"] for r in _rows(tmp_path / "dataworker")] == [0, 1, 2]  # each epoch once
    saved = yaml.safe_load((tmp_path / "dataworker" / "config.yaml").read_text())
    assert saved["data"]["num_workers"] == 0
