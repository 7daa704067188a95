"""Test double for `python -m hrnet_sweep.train`: speaks the run-control contract of
ARCHITECTURE.md (metrics.jsonl per epoch, STOP honoured at epoch ends, status.json at
exit, exit 0 finished/stopped, 1 failed) in milliseconds, without torch.

    python tests/fake_train.py key=value ...      (what ${args_no_hyphens} gives)

The metric of epoch e (0-based) is q * (1 - 0.5 ** (e + 1)) with q = seed / 10 when a
`seed` parameter is given, else a bump around lr = 3e-4. Behaviour switches (env):

    FAKE_TRAIN_EPOCH_S     seconds per epoch (default 0.05)
    FAKE_TRAIN_FAIL_SEEDS  comma-separated seeds whose run fails at epoch 1 (status failed, exit 1)
    FAKE_TRAIN_RECORD      folder: write <run_id>.json with argv, interpreter, env, cwd, pid and
                           process group (macro tests)

It writes its pid to `<control dir>/fake_train.pid` (SIGKILL tests) and a small
`last.ckpt` / `best.ckpt` under `<output_dir>/<run id>/checkpoints/` (disk-policy tests).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path


def _parse(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        out[key] = value
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    params = _parse(argv)
    run_id = os.environ.get("WANDB_RUN_ID", "norun")
    control = Path(os.environ["HRNET_SWEEP_CONTROL_DIR"]) if os.environ.get("HRNET_SWEEP_CONTROL_DIR") else None
    record = os.environ.get("FAKE_TRAIN_RECORD")
    if record:
        Path(record).mkdir(parents=True, exist_ok=True)
        _write_json(
            Path(record) / f"{run_id}.json",
            {
                "argv": sys.argv,
                "executable": sys.executable,
                "env": dict(os.environ),
                "cwd": os.getcwd(),
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
            },
        )
    if control:
        control.mkdir(parents=True, exist_ok=True)
        (control / "fake_train.pid").write_text(str(os.getpid()))
    run_dir = Path(params.get("output_dir", "outputs")) / run_id
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    epochs = int(params.get("trainer.max_epochs", 6))
    epoch_s = float(os.environ.get("FAKE_TRAIN_EPOCH_S", "0.05"))
    fail_seeds = {s for s in os.environ.get("FAKE_TRAIN_FAIL_SEEDS", "").split(",") if s}
    seed = params.get("seed")
    if seed is not None:
        q = float(seed) / 10
    else:
        lr = float(params.get("models.optimizer.lr", 3e-4))
        q = max(0.05, 0.9 - 0.3 * abs(math.log10(lr / 3e-4)))

    status = {
        "state": "finished",
        "reason": None,
        "best": None,
        "best_epoch": None,
        "run_dir": str(run_dir),
        "best_ckpt": None,
        "last_ckpt": None,
    }

    def finish(state: str, reason: str | None = None, code: int = 0) -> int:
        status.update(state=state, reason=reason)
        if control:
            _write_json(control / "status.json", status)
        return code

    def on_term(signum, frame):
        sys.exit(finish("interrupted", "interrupted by a signal", 130))

    signal.signal(signal.SIGTERM, on_term)
    best = None
    for epoch in range(epochs):
        time.sleep(epoch_s)
        if seed in fail_seeds and epoch == 1:
            return finish("failed", "loss is NaN at epoch 1 (fake)", 1)
        h = q * (1 - 0.5 ** (epoch + 1))
        row = {"epoch": epoch, "step": (epoch + 1) * 10, "val/hmean": h, "val/precision": h, "val/recall": h}
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000)
        status["last_ckpt"] = str(run_dir / "checkpoints" / "last.ckpt")
        if best is None or h > best:
            best = h
            (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"x" * 2000)
            status.update(best=h, best_epoch=epoch, best_ckpt=str(run_dir / "checkpoints" / "best.ckpt"))
        if control:
            with open(control / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if (control / "STOP").exists():
                return finish("stopped", "stopped by the sweep engine (Hyperband)")
    return finish("finished")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
