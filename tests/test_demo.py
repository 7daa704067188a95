"""The demo: its derived sweep file is valid, it never deletes a folder it did not make,
and (slow) the `--fast` pipeline runs end to end: synth -> sweep -> best -> kfold -> tune
-> predict -> validated CSV -> fold vs ensemble table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hrnet_sweep.errors import UserError
from hrnet_sweep.pipeline import demo


@pytest.mark.unit
def test_demo_sweep_keeps_the_search_space_and_adds_the_budget(tmp_path):
    from hrnet_sweep.sweep.sweepfile import load_sweep

    path = demo._sweep_yaml(demo.DEFAULT, tmp_path / "s.yaml")
    spec = load_sweep(path)
    original = yaml.safe_load(demo.DEMO_SWEEP.read_text())
    assert spec.method == original["method"] and spec.metric_name == "val/hmean"
    for key, body in original["parameters"].items():
        if "value" not in body:
            assert spec.parameters[key].kind != "value"  # the searched ranges are untouched
    fixed = spec.fixed()
    assert fixed["trainer.max_epochs"] == demo.DEFAULT.epochs and fixed["callbacks.early_stopping.enabled"] is False
    assert (fixed["data.image_height"], fixed["data.image_width"]) == demo.DEFAULT.image_size
    assert spec.run_cap == demo.DEFAULT.run_cap
    lr = spec.parameters["models.optimizer.lr"]  # narrowed, never widened
    assert (
        original["parameters"]["models.optimizer.lr"]["min"]
        <= lr.min
        < lr.max
        <= original["parameters"]["models.optimizer.lr"]["max"]
    )


@pytest.mark.unit
def test_demo_sweep_and_presets_ship_inside_the_package():
    # `pip install .` (not editable) carries only package data: the demo must not need
    # the checkout's sweeps/ folder.
    import configparser

    import hrnet_sweep

    pkg = Path(hrnet_sweep.__file__).parent
    assert demo.DEMO_SWEEP.parent.parent == pkg and demo.DEMO_SWEEP.is_file()
    cfg = configparser.ConfigParser()
    cfg.read(pkg.parent / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["hrnet_sweep"].split(",")]
    shipped = {f for pattern in patterns for f in pkg.glob(pattern)}
    assert demo.DEMO_SWEEP in shipped and any(f.parent.name == "presets" for f in shipped)
    # the checkout's sweeps/cpu_demo.yaml is the same file
    assert (pkg.parent / "sweeps" / "cpu_demo.yaml").resolve() == demo.DEMO_SWEEP


@pytest.mark.unit
def test_demo_never_removes_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not a demo folder"):
        demo._prepare(tmp_path, print)
    assert (tmp_path / "mine.txt").read_text() == "keep"
    d = tmp_path / "demo"
    demo._prepare(d, print)
    (d / "old.txt").write_text("x")
    demo._prepare(d, print)  # an earlier demo is replaced
    assert not (d / "old.txt").exists() and (d / demo.MARKER).is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_fast_demo_end_to_end(tmp_path, monkeypatch):
    from hrnet_sweep.config import load_config
    from hrnet_sweep.pipeline.presets import read_provenance
    from hrnet_sweep.submission import validate_submission

    monkeypatch.delenv("HRNET_SWEEP_DATA", raising=False)
    lines: list[str] = []
    doc = demo.run_demo(tmp_path / "demo", budget=demo.FAST, say=lines.append)
    assert doc["state"] == "finished"
    assert json.loads((tmp_path / "demo" / demo.MARKER).read_text())["state"] == "finished"
    assert set(doc["results"]) == {"fold 0", "fold 1", "ensemble"}
    assert all(0 <= r["hmean"] <= 1 for r in doc["results"].values())
    out = doc["outputs"]
    assert validate_submission(out["submission"], images=Path(out["test"]) / "images").valid
    prov = read_provenance(out["preset"])
    assert prov["source"] == "local" and prov["metric"] == "val/hmean"
    pp = load_config([f"preset={out['preset']}"]).models.postprocess
    assert {k: getattr(pp, k) for k in doc["postprocess"]} == doc["postprocess"]
    summary = json.loads(Path(out["summary"]).read_text())
    assert [summary["folds"][k]["state"] for k in ("0", "1")] == ["finished", "finished"]
    text = "\n".join(lines)
    for stage in ("[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]", "demo finished"):
        assert stage in text
