"""`hrnet_sweep best`: ranking over plain run records, the W&B source (through a fake
`wandb.Api` test double: W&B is never reached from the tests), the local engine source,
and the preset export."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import yaml

from _util import sweep_doc
from hrnet_sweep.config import load_config
from hrnet_sweep.errors import UserError
from hrnet_sweep.pipeline import best as best_cmd
from hrnet_sweep.pipeline.presets import read_provenance
from hrnet_sweep.ranking import RunRecord, rank_runs

REPO = Path(__file__).resolve().parents[1]
NAN = float("nan")

# ----------------------------------------------------------------------------- test doubles of the W&B public API

SWEEP_PATH = "acme/receipts/abc123"
SWEEP_CONFIG = sweep_doc(
    {"models.scheduler.T_max": {"values": [4, 8]}, "trainer.max_epochs": {"value": 8}},
    lr=(1e-4, 1e-2),
    early_terminate=None,
    command=None,
)


class FakeRun:
    """Test double of `wandb.apis.public.Run`: id, name, state, config, summary_metrics and
    `scan_history(keys=...)` returning only rows that hold every requested key."""

    def __init__(self, run_id, state, values, *, lr=1e-3, t_max=8, summary=None, nested=False, epochs=True):
        self.id, self.name, self.state = run_id, f"run-{run_id}", state
        params = {
            "models.optimizer.lr": lr,
            "models.scheduler.T_max": t_max,
            "trainer.max_epochs": 8,
            "preset": "hrnet_w18_small_cpu",
        }
        if nested:  # as the Lightning logger stores it: a nested tree, the sweep keys absent
            params = {
                "preset": "hrnet_w18_small_cpu",
                "models": {"optimizer": {"lr": lr}, "scheduler": {"T_max": t_max}},
                "trainer": {"max_epochs": 8},
            }
        self.config = params
        self.summary_metrics = (
            summary if summary is not None else ({"val/hmean": {"max": max(values)}} if values else {})
        )
        self._rows = []
        for i, v in enumerate(values):
            self._rows.append({"_step": 10 * i + 9, "val/hmean": v, **({"epoch": i} if epochs else {})})
            self._rows.append({"_step": 10 * i + 5, "train/loss": 1.0 / (i + 1)})
        self.scans = 0

    def scan_history(self, keys=None, page_size=1000):
        self.scans += 1
        return iter([r for r in self._rows if keys is None or all(k in r for k in keys)])


class FakeSweep:
    def __init__(self, runs, config=SWEEP_CONFIG):
        self.runs, self.config = runs, config


class FakeApi:
    """Test double of `wandb.Api`: `sweep(path)` from a dict; optionally fails the first
    `fail` calls with `error`, or blocks until `release` is set."""

    def __init__(self, sweeps, *, fail=0, error=ConnectionError("connection reset by peer"), release=None):  # noqa: B008
        self.sweeps, self.fail, self.error, self.release = sweeps, fail, error, release
        self.calls = 0

    def sweep(self, path):
        self.calls += 1
        if self.release is not None:
            self.release.wait(30)
        if self.calls <= self.fail:
            raise self.error
        if path not in self.sweeps:
            raise ValueError(f"Could not find sweep {path}")
        return self.sweeps[path]


def wandb_fixture_runs():
    return [
        FakeRun("a1", "finished", [0.50, 0.81, 0.70]),  # best 0.81 at epoch 1, last lower
        FakeRun("b2", "finished", [0.60, 0.75, 0.78], lr=2e-3),  # best = last = 0.78
        FakeRun("c3", "crashed", [0.95]),
        FakeRun("d4", "killed", [0.97]),
        FakeRun("e5", "finished", [NAN, NAN], summary={"val/hmean": NAN}),
        FakeRun("f6", "running", [0.99]),
        FakeRun("g7", "failed", [0.96]),
        FakeRun("h8", "finished", [0.40, 0.79], lr=5e-3, t_max=4, nested=True, epochs=False),
    ]


# ----------------------------------------------------------------------------- ranking (pure)


@pytest.mark.unit
def test_rank_by_best_not_last_and_exclusions_counted():
    runs = [
        RunRecord("a", "finished", history=[0.5, 0.81, 0.70]),
        RunRecord("b", "finished", history=[0.6, 0.75, 0.78]),
        RunRecord("c", "crashed", history=[0.95]),
        RunRecord("d", "killed", history=[0.97]),
        RunRecord("e", "finished", history=[NAN, None]),
        RunRecord("f", "running", history=[0.99]),
        RunRecord("g", "Failed", history=[0.96]),
        RunRecord("h", "finished", history=[NAN, 0.6, math.inf]),
    ]
    r = rank_runs(runs)
    assert [x.run.id for x in r.ranked] == ["a", "b", "h"]
    assert (r.best.best, r.best.epoch, r.best.last) == (0.81, 1, 0.70)
    assert r.ranked[2].best == 0.6 and r.ranked[2].epoch == 1  # NaN and inf entries ignored
    assert r.counts() == {"crashed": 1, "killed": 1, "running": 1, "failed": 1, "no finite val/hmean": 1}


@pytest.mark.unit
def test_rank_ties_go_to_earlier_epoch_then_id_and_order_does_not_matter():
    runs = [
        RunRecord("z", "finished", history=[0.1, 0.2, 0.9]),
        RunRecord("y", "finished", history=[0.9]),
        RunRecord("x", "finished", history=[0.2, 0.9, 0.9]),
    ]
    for order in (runs, runs[::-1]):
        assert [x.run.id for x in rank_runs(order).ranked] == ["y", "x", "z"]
    assert rank_runs(runs).ranked[1].epoch == 1  # the first time 0.9 was reached


@pytest.mark.unit
def test_rank_uses_recorded_epochs_and_summary_fallback():
    r = rank_runs(
        [
            RunRecord("a", "finished", history=[0.3, 0.7], epochs=[1, 3]),
            RunRecord("b", "finished", history=[], summary={"val/hmean": {"max": 0.9}}),
            RunRecord("c", "finished", history=[], summary={}),
        ]
    )
    assert [(x.run.id, x.best, x.epoch) for x in r.ranked] == [("b", 0.9, None), ("a", 0.7, 3)]
    assert r.counts() == {"no finite val/hmean": 1}


@pytest.mark.unit
def test_rank_empty_and_all_excluded():
    assert rank_runs([]).best is None
    r = rank_runs([RunRecord("a", "running", history=[0.5])])
    assert r.best is None and r.counts() == {"running": 1}


# ----------------------------------------------------------------------------- W&B source (test doubles)


@pytest.mark.unit
def test_wandb_runs_reads_records_through_the_api_double():
    api = FakeApi({SWEEP_PATH: FakeSweep(wandb_fixture_runs())})
    sweep = best_cmd.wandb_runs(SWEEP_PATH, api_factory=lambda timeout: api, sleep=lambda s: None)
    assert sweep.kind == "wandb" and sweep.default_preset == "hrnet_w18_small_cpu"
    assert sweep.parameters == list(SWEEP_CONFIG["parameters"])
    ranking = rank_runs(sweep.runs)
    assert [x.run.id for x in ranking.ranked] == ["a1", "h8", "b2"]
    assert ranking.best.epoch == 1 and ranking.best.last == 0.70
    assert ranking.counts() == {"crashed": 1, "killed": 1, "running": 1, "failed": 1, "no finite val/hmean": 1}
    h8 = next(x for x in ranking.ranked if x.run.id == "h8")
    assert h8.epoch == 1  # rows without "epoch": the position of the value in the history
    # nested config (as the logger stores it) resolves the dotted sweep keys
    assert best_cmd.exported_params(h8.run, sweep.parameters) == {
        "models.optimizer.lr": 5e-3,
        "models.scheduler.T_max": 4,
        "trainer.max_epochs": 8,
    }


@pytest.mark.unit
def test_wandb_transient_errors_are_retried_then_succeed():
    sleeps = []
    api = FakeApi({SWEEP_PATH: FakeSweep(wandb_fixture_runs())}, fail=2)
    sweep = best_cmd.wandb_runs(SWEEP_PATH, api_factory=lambda t: api, retries=3, backoff=0.5, sleep=sleeps.append)
    assert api.calls == 3 and sleeps == [0.5, 1.0] and len(sweep.runs) == 8


@pytest.mark.unit
@pytest.mark.parametrize(
    "error",
    [
        TimeoutError("read timed out"),
        ConnectionError("connection refused"),
        RuntimeError("HTTP 503 Service Unavailable"),
    ],
)
def test_wandb_persistent_errors_give_a_clear_error_after_retries(error):
    api = FakeApi({}, fail=100, error=error)
    with pytest.raises(UserError, match=r"failed after 3 attempts.*try again"):
        best_cmd.wandb_runs(SWEEP_PATH, api_factory=lambda t: api, retries=2, sleep=lambda s: None)
    assert api.calls == 3


@pytest.mark.unit
def test_wandb_missing_sweep_is_not_retried():
    api = FakeApi({})
    with pytest.raises(UserError, match="Could not find sweep"):
        best_cmd.wandb_runs(SWEEP_PATH, api_factory=lambda t: api, sleep=lambda s: None)
    assert api.calls == 1


@pytest.mark.unit
def test_wandb_stuck_client_hits_the_deadline_instead_of_hanging():
    release = threading.Event()
    api = FakeApi({SWEEP_PATH: FakeSweep([])}, release=release)
    t0 = time.monotonic()
    try:
        with pytest.raises(UserError, match="did not answer within"):
            best_cmd.wandb_runs(SWEEP_PATH, api_factory=lambda t: api, deadline=0.3)
    finally:
        release.set()
    assert time.monotonic() - t0 < 5


@pytest.mark.unit
def test_wandb_without_credentials_fails_clearly(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.raises(UserError, match="wandb login"):
        best_cmd.wandb_runs(SWEEP_PATH, sleep=lambda s: None)


@pytest.mark.unit
def test_wandb_sweep_on_another_metric_is_refused():
    cfg = {**SWEEP_CONFIG, "metric": {"name": "val/loss", "goal": "minimize"}}
    api = FakeApi({SWEEP_PATH: FakeSweep([], config=cfg)})
    with pytest.raises(UserError, match="val/loss"):
        best_cmd.wandb_runs(SWEEP_PATH, api_factory=lambda t: api)


# ----------------------------------------------------------------------------- CLI and export


@pytest.fixture
def fake_wandb(monkeypatch):
    api = FakeApi({SWEEP_PATH: FakeSweep(wandb_fixture_runs())})
    monkeypatch.setattr(best_cmd, "_default_api", lambda timeout: api)
    return api


@pytest.mark.unit
def test_best_cli_prints_table_and_exports(fake_wandb, tmp_path, capsys):
    out = tmp_path / "best.yaml"
    assert best_cmd.main([SWEEP_PATH, "--top", "2", "--export", str(out)]) == 0
    text = capsys.readouterr().out
    table = text.split("excluded")[0]
    assert "run-a1" in table and "0.8100" in table and "run-h8" in table and "run-b2" not in table  # top 2
    assert "1 crashed" in text and "1 no finite val/hmean" in text
    doc = yaml.safe_load(out.read_text())
    assert doc == {
        "base": "hrnet_w18_small_cpu",
        "models": {"optimizer": {"lr": 1e-3}, "scheduler": {"T_max": 8}},
        "trainer": {"max_epochs": 8},
        # a W&B sweep's preset logs to W&B in the sweep's project: kfold's folds land beside it
        "wandb": True,
        "logging": {"project": "receipts", "entity": "acme"},
    }
    prov = read_provenance(out)
    assert prov["sweep"] == SWEEP_PATH and prov["run"] == "a1" and prov["metric"] == "val/hmean"
    assert prov["best"] == 0.81 and prov["epoch"] == 1 and prov["last"] == 0.7 and "date" in prov
    cfg = load_config([f"preset={out}"])
    assert cfg.models.optimizer.lr == 1e-3 and cfg.models.scheduler.T_max == 8
    assert cfg.models.name == "hrnet_w18_small"


@pytest.mark.unit
def test_export_refuses_overwrite_without_force(fake_wandb, tmp_path):
    out = tmp_path / "best.yaml"
    out.write_text("mine: 1\n")
    with pytest.raises(UserError, match="--force"):
        best_cmd.main([SWEEP_PATH, "--export", str(out)])
    assert out.read_text() == "mine: 1\n"
    assert best_cmd.main([SWEEP_PATH, "--export", str(out), "--force"]) == 0
    assert "base: hrnet_w18_small_cpu" in out.read_text()


@pytest.mark.unit
def test_export_never_leaves_a_partial_file(fake_wandb, tmp_path, monkeypatch):
    out = tmp_path / "best.yaml"
    real = Path.write_text

    def broken(self, text, *a, **kw):
        if self.name.startswith(".best.yaml"):
            real(self, text[:20], *a, **kw)
            raise OSError(28, "No space left on device")
        return real(self, text, *a, **kw)

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError):
        best_cmd.main([SWEEP_PATH, "--export", str(out)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_export_rejects_a_run_value_the_config_refuses(tmp_path):
    sweep = best_cmd.SweepRuns("s", "wandb", [], ["models.optimizer.lr"], "hrnet_w18_small_cpu")
    bad = rank_runs([RunRecord("a", "finished", config={"models.optimizer.lr": -1.0}, history=[0.5])]).best
    with pytest.raises(UserError, match="models.optimizer.lr"):
        best_cmd.export_preset(tmp_path / "x.yaml", sweep, bad)
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.unit
def test_plain_numbers_in_export(tmp_path):
    import numpy as np

    sweep = best_cmd.SweepRuns(
        "s", "wandb", [], ["models.optimizer.lr", "models.scheduler.T_max"], "hrnet_w18_small_cpu"
    )
    run = RunRecord(
        "a", "finished", config={"models.optimizer.lr": np.float64(3e-4), "models.scheduler.T_max": "6"}, history=[0.5]
    )
    path = best_cmd.export_preset(tmp_path / "x.yaml", sweep, rank_runs([run]).best)
    doc = yaml.safe_load(path.read_text())
    assert doc["models"]["optimizer"]["lr"] == 3e-4 and type(doc["models"]["optimizer"]["lr"]) is float
    assert doc["models"]["scheduler"]["T_max"] == 6 and type(doc["models"]["scheduler"]["T_max"]) is int


@pytest.mark.unit
def test_unknown_sweep_reference_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a local sweep"):
        best_cmd.load_runs(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- local sweeps (embedded engine)


@pytest.mark.integration
def test_best_on_a_local_sweep(tmp_path, capsys):
    from hrnet_sweep.sweep.engine import LocalSweep, RunOutcome

    sweep = LocalSweep.create(REPO / "sweeps" / "cpu_demo.yaml", sweep_dir=tmp_path / "sw")
    histories = {"finished": [0.2, 0.6, 0.5], "stopped": [0.1, 0.9], "failed": [0.3]}
    ids = {}
    for state, hist in [
        ("finished", histories["finished"]),
        ("stopped", histories["stopped"]),
        ("failed", histories["failed"]),
        ("finished", [0.1, 0.4]),
    ]:
        sug = sweep.suggest(agent="test")
        sweep.report(sug.number, hist, 0)
        value = max(hist) if state == "finished" else None
        sweep.finish(sug.number, RunOutcome(state, value=value))
        ids.setdefault(state, sug.run_id)
    running = sweep.suggest(agent="test")  # still running (this process is alive)
    sweep.report(running.number, [0.99], 0)
    out = tmp_path / "best.yaml"
    assert best_cmd.main([str(tmp_path / "sw"), "--export", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 stopped" in text and "1 failed" in text and "1 running" in text
    prov = read_provenance(out)
    assert prov["run"] == ids["finished"] and prov["best"] == 0.6 and prov["epoch"] == 1
    assert prov["source"] == "local"
    cfg = load_config([f"preset={out}"])
    fixed = sweep.spec.fixed()  # the sweep's `value:` parameters are in the preset
    assert cfg.trainer.max_epochs == fixed["trainer.max_epochs"] and cfg.data.image_height == fixed["data.image_height"]
    assert cfg.models.optimizer.lr == pytest.approx(sweep.runs()[0].params["models.optimizer.lr"])


# ----------------------------------------------------------------------------- the exported preset trains


@pytest.mark.integration
def test_exported_preset_trains_one_tiny_epoch(fake_wandb, tmp_path, synth_data, monkeypatch):
    from hrnet_sweep.pipeline.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")  # the preset of a W&B sweep logs to W&B: offline here
    out = tmp_path / "best.yaml"
    assert best_cmd.main([SWEEP_PATH, "--export", str(out)]) == 0
    cfg = load_config(
        [
            f"preset={out}",
            f"data.root={synth_data}",
            "data.image_height=64",
            "data.image_width=64",
            "models.decoder.inner_channels=16",
            "trainer.max_epochs=1",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.num_folds=2",
            f"output_dir={tmp_path / 'runs'}",
            "run_name=r",
            "trainer.progress_bar=false",
            "logging.tensorboard=false",
        ]
    )
    assert cfg.models.optimizer.lr == 1e-3
    result = run(cfg)
    assert result.state == "finished" and result.epochs == 1
    assert (tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "runs" / "r" / "wandb").glob("offline-run-*"))
