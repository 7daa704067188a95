"""Small helpers shared by several test files."""

from __future__ import annotations

import os
from pathlib import Path

from hrnet_sweep.constants import METRIC

REPO = Path(__file__).resolve().parents[1]
TRAIN_CMD = ["${env}", "${interpreter}", "-m", "hrnet_sweep.train", "${args_no_hyphens}"]
"""The sweep `command` of the shipped sweeps: `python -m hrnet_sweep.train key=value ...`."""


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie is dead for our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sweep_doc(params: dict | None = None, *, lr: tuple[float, float] = (3e-4, 3e-3), **over) -> dict:
    """A valid CPU sweep document, as `yaml.safe_load` returns it.

    bayes, maximize `val/hmean`, preset hrnet_w18_small_cpu (lr 1e-3, wd 1e-4, T_max 8,
    8 epochs, patience 4), lr searched log-uniform over `lr`, then `params`; Hyperband
    min_iter 2, eta 3, strict; `TRAIN_CMD`. Each top-level key in `over` replaces the
    default, or removes it when None.
    """
    doc = {
        "method": "bayes",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {
            "preset": {"value": "hrnet_w18_small_cpu"},
            "models.optimizer.lr": {"distribution": "log_uniform_values", "min": lr[0], "max": lr[1]},
            **(params or {}),
        },
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3, "strict": True},
        "command": list(TRAIN_CMD),
    }
    for k, v in over.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc
