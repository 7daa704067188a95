"""Shared fixtures: paths to the optional real data and a small synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SROIE = Path(os.environ.get("HRNET_SWEEP_SROIE", REPO.parent / "shared" / "data" / "sroie-mini"))


@pytest.fixture(scope="session")
def sroie_dir() -> Path:
    if not (SROIE / "train.json").is_file():
        pytest.skip(f"sroie-mini not found at {SROIE} (set HRNET_SWEEP_SROIE)")
    return SROIE


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A tiny synthetic receipt dataset (train/val/test splits), made once per session."""
    from hrnet_sweep.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, num_images=16, seed=3, progress=False)
    return out


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test starts from the same environment: an in-process W&B run sets
    `WANDB_SERVICE` (and commands set `HRNET_SWEEP_DATA`), and a later test's child
    process would inherit them (a `best` subprocess then waited on the dead service)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
