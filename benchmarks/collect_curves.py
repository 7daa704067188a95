"""Record the learning curves `benchmarks/sweep_replay.py` replays the sweep engine on.

    python benchmarks/collect_curves.py             # every stage; run it again to resume
    python benchmarks/collect_curves.py --stage export   # only rewrite the curve file

Writes `benchmarks/data/sroie_curves.json` (its format: `hrnet_sweep.sweep.curves`) and
`docs/sroie_curves.png` (every curve, coloured by learning rate).
Everything else lands in `outputs/curves/` (the warm start, the sweeps and their runs).
Hours of CPU on a 2-core machine (a run took 4.6 min, median, with two runs side by
side on the 2 cores, one thread each; 60 runs and the warm start: about 3 hours):
run it in the background; every stage resumes where it stopped.

The problem is the shipped sweep's (`sweeps/hrnet_w44_1280.yaml`: lr, weight_decay and
eta_min log-uniform, T_max in {15, 18, 20, 25}, 20 validations) on a CPU proxy small
enough for one run to take about two minutes:

1. **pretrain**: the GPU sweep fine-tunes an ImageNet-pretrained HRNet-W44; from scratch
   on a CPU the proxy would spend its two minutes on the plateau where val/hmean is 0
   whatever the learning rate. So it starts from a detector: 3 epochs of the receipts
   preset (768 x 544, sroie-mini `train.json`; val/hmean 0.64 there, 0.80 at the
   proxy's canvas). The start has seen the training receipts, never `val.json`. (A start
   trained on synthetic receipts was tried first: 9 epochs at 512 x 352 left it at 0.)
2. **random**: a local sweep of the package (`hrnet_sweep sweep --local`, `method:
   random`, no early stopping, run cap 48; `benchmarks/sweeps/sroie_curves.yaml`) trains
   that start (the preset `benchmarks/sweeps/sroie_proxy.yaml`) on sroie-mini's
   `train.json` at a 512 x 352 canvas and validates on the first 16 receipts of
   `val.json` with tuned validation; an "epoch" is 6 batches of 4 receipts (a random 24
   of the 100 each time), so 20 epochs are 480 receipts seen, about 5 passes.
3. **repeats**: four configurations of the random sweep, its best and those a quarter,
   half and three quarters down its ranking by best val/hmean, each trained again with
   seeds 1, 2 and 3 (one grid sweep over `seed` per configuration; a seed whose run
   failed is replaced by seed 4, then 5, in a second grid sweep): four seeds per
   configuration with the sweep's own seed 42. `--stage repeats` runs them beside a
   random sweep still running, from the runs finished by then.
4. **export**: the curve file, from the sweeps' journals (`val/hmean` per epoch) and the
   runs' `metrics.jsonl` (`val/hmean_fixed`, the time of each validation).

Needs `../shared/data/sroie-mini` (or `HRNET_SWEEP_SROIE`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from hrnet_sweep.analysis.plots import recorded_curves  # noqa: E402
from hrnet_sweep.children import child_env  # noqa: E402
from hrnet_sweep.config import config_from_dict  # noqa: E402
from hrnet_sweep.constants import DATA_ROOT_ENV, METRIC  # noqa: E402
from hrnet_sweep.dbnet.lit import VAL_HMEAN_FIXED  # noqa: E402
from hrnet_sweep.files import atomic_write_json, atomic_write_text, read_json, read_text  # noqa: E402
from hrnet_sweep.runfolder import read_history  # noqa: E402
from hrnet_sweep.sweep.curves import Curve, write_curves  # noqa: E402
from hrnet_sweep.sweep.engine import LocalSweep  # noqa: E402
from hrnet_sweep.sweep.sweepfile import load_sweep  # noqa: E402

SROIE = Path(os.environ.get("HRNET_SWEEP_SROIE", REPO.parent / "shared" / "data" / "sroie-mini"))
WORK = REPO / "outputs" / "curves"
SWEEP_FILE = REPO / "benchmarks" / "sweeps" / "sroie_curves.yaml"
CURVES = REPO / "benchmarks" / "data" / "sroie_curves.json"
PLOT = REPO / "docs" / "sroie_curves.png"
PRETRAINED = WORK / "pretrained.ckpt"  # the proxy preset names it, relative to the repository
EPOCHS = 20  # the proxy preset's trainer.max_epochs
RANDOM_RUNS = 48
REPEAT_QUANTILES = (0.0, 0.25, 0.5, 0.75)  # of the random runs finished when the repeats start
REPEAT_SEEDS = (1, 2, 3)
SPARE_SEEDS = (4, 5)  # stand in for a repeat seed whose run failed (in `repeat_K_spare`)
PROBLEM = (
    "HRNet-W18-small (warm start: 3 epochs of the receipts preset at 768 x 544 on train.json) trained on sroie-mini "
    "train.json (100 receipts; 6 batches of 4 per epoch) and validated on the first 16 receipts of val.json at a "
    "512 x 352 canvas with tuned post-processing, AdamW + cosine, 20 epochs: a CPU proxy of "
    "sweeps/hrnet_w44_1280.yaml"
)
PRETRAIN = [  # the receipts preset (768 x 544) for 3 epochs, cosine over those 3
    "preset=hrnet_w18_small_cpu_receipts",
    "data.fold=null",
    "trainer.max_epochs=3",
    "models.scheduler.T_max=3",
    "logging.val_images=0",
    "trainer.progress_bar=false",
]


def _hrnet_sweep(*args: str, env: dict[str, str] | None = None) -> int:
    """`hrnet_sweep ARGS` as a user runs it, from the repository root."""
    cmd = [sys.executable, "-m", "hrnet_sweep", *args]
    print("$ " + " ".join(cmd[2:]), flush=True)
    return subprocess.call(cmd, cwd=REPO, env=child_env(env))


def pretrain() -> None:
    """The proxy's starting point: a detector that has just left the from-scratch plateau."""
    if PRETRAINED.is_file():
        print(f"pretrain: {PRETRAINED} exists", flush=True)
        return
    run = WORK / "pretrain"
    code = _hrnet_sweep("train", *PRETRAIN, f"data.root={SROIE}", f"output_dir={WORK}", "run_name=pretrain")
    last = run / "checkpoints" / "last.ckpt"
    if code != 0 or not last.is_file():
        sys.exit(f"pretrain failed (exit {code}); see {run}")
    shutil.copyfile(last, PRETRAINED)
    print(f"pretrain: {last} -> {PRETRAINED}", flush=True)


def _finished(sweep_dir: Path) -> tuple[list, int]:
    """The sweep's finished runs, and how many runs it has in all."""
    runs = LocalSweep.open(sweep_dir).runs()
    return [r for r in runs if r.state == "finished"], len(runs)


def run_sweep(sweep_file: Path, sweep_dir: Path, wanted: int) -> list:
    """Create (or resume) a local sweep until `wanted` of its runs finished; return its
    finished runs (fewer when a grid ran out of points).

    A run that failed or crashed counts against the run cap; the cap is raised by as many
    on resume, so the sweep still ends with `wanted` finished runs."""
    env = {**os.environ, DATA_ROOT_ENV: str(SROIE)}
    agent = ["--gpus", "cpu", "--agents", "1", "--stagger", "0"]
    for _ in range(3):
        if not (sweep_dir / "sweep.json").is_file():
            code = _hrnet_sweep("sweep", "--local", str(sweep_file), "--sweep-dir", str(sweep_dir), *agent, env=env)
        else:
            done, total = _finished(sweep_dir)
            if len(done) >= wanted or "grid" in (LocalSweep.open(sweep_dir).exhausted() or ""):
                return done
            cap = total + wanted - len(done)
            code = _hrnet_sweep("sweep", "--resume", str(sweep_dir), "--run-cap", str(cap), *agent, env=env)
        if code not in (0, 1):  # 1: some runs failed; looked at on the next pass
            sys.exit(f"the sweep in {sweep_dir} ended with exit {code}")
    done, total = _finished(sweep_dir)
    if len(done) < wanted:
        sys.exit(
            f"{sweep_dir}: {len(done)} of {wanted} runs finished after {total} runs; see hrnet_sweep status {sweep_dir}"
        )
    return done


def random_sweep() -> list:
    return run_sweep(SWEEP_FILE, WORK / "random", RANDOM_RUNS)


def repeats(random_runs: list) -> list[list]:
    """Three more seeds of four configurations of the random sweep: its best, and those at a
    quarter, half and three quarters down its ranking (of the runs finished when the
    repeats start; the choice is kept in `repeats.json`, so a resume repeats the same)."""
    choice_file = WORK / "repeats.json"
    if choice_file.is_file():
        chosen = read_json(choice_file)
    else:
        ranked = sorted(random_runs, key=lambda r: -r.best)
        searched = list(load_sweep(SWEEP_FILE).searched())
        chosen = [{k: ranked[int(q * len(ranked))].params[k] for k in searched} for q in REPEAT_QUANTILES]
        atomic_write_json(choice_file, chosen, indent=2)
    doc = yaml.safe_load(SWEEP_FILE.read_text(encoding="utf-8"))
    out = []
    for k, params in enumerate(chosen):
        done = _seed_sweep(doc, params, f"repeat_{k}", REPEAT_SEEDS)
        spare = [s for s in SPARE_SEEDS if s not in {r.params["seed"] for r in done}]
        if len(done) < len(REPEAT_SEEDS):  # a seed failed: its grid point is spent, another seed stands in
            done += _seed_sweep(doc, params, f"repeat_{k}_spare", spare[: len(REPEAT_SEEDS) - len(done)])
        out.append(done)
    return out


def _seed_sweep(doc: dict, params: dict, name: str, seeds) -> list:
    """A grid sweep over `seed` with `params` fixed (`outputs/curves/<name>.yaml`); its finished runs."""
    rep = {
        **doc,
        "name": f"sroie_curves_{name}",
        "method": "grid",
        "run_cap": len(seeds),  # run_sweep raises it by the runs that failed
        "parameters": {
            "preset": doc["parameters"]["preset"],
            **{key: {"value": v} for key, v in params.items()},
            "seed": {"values": list(seeds)},
        },
    }
    path = WORK / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(rep, sort_keys=False))
    return run_sweep(path, WORK / name, len(seeds))


def _curve(run, source: str, searched: list[str]) -> Curve | None:
    """A finished run as a curve: values from its metrics.jsonl, times from its rows and
    the journal's start and end; None when it does not hold every epoch."""
    rows = read_history(run.control_dir)
    if len(rows) != EPOCHS or run.started_at is None or run.ended_at is None:
        return None
    times = [run.started_at, *(float(r["time"]) for r in rows)]
    path = Path(run.run_dir, "config.yaml")
    config = config_from_dict(yaml.safe_load(read_text(path, "run config")), str(path))
    return Curve(
        run_id=run.run_id,
        source=source,
        seed=config.seed,
        params={k: run.params[k] for k in searched},
        hmean=tuple(float(r[METRIC]) for r in rows),
        hmean_fixed=tuple(float(r[VAL_HMEAN_FIXED]) for r in rows),
        epoch_s=tuple(b - a for a, b in zip(times, times[1:])),
        end_s=max(0.0, run.ended_at - times[-1]),
    )


def export() -> Path:
    """Every finished run of the sweeps in `outputs/curves/` -> the curve file."""
    doc = yaml.safe_load(SWEEP_FILE.read_text(encoding="utf-8"))
    searched = list(load_sweep(SWEEP_FILE).searched())
    curves = []
    folders = [(WORK / "random", "random"), *((p, "repeat") for p in sorted(WORK.glob("repeat_*")) if p.is_dir())]
    for folder, source in folders:
        if (folder / "sweep.json").is_file():
            curves += [c for c in (_curve(r, source, searched) for r in _finished(folder)[0]) if c is not None]
    if not curves:
        sys.exit(f"no finished run in {WORK}; run the collection first")
    meta = {
        "command": "python benchmarks/collect_curves.py",
        "problem": PROBLEM,
        "metric": METRIC,
        "machine": (
            f"{os.cpu_count()} CPU cores, one thread per run; the runs were recorded two side by side "
            "(a second agent, or the repeats beside the random sweep), so epoch_s are times on a shared machine"
        ),
    }
    write_curves(CURVES, sweep=doc, epochs=EPOCHS, runs=curves, meta=meta)
    n_cfg = len({tuple(sorted(c.params.items())) for c in curves})
    print(f"wrote {CURVES}: {len(curves)} runs, {n_cfg} configurations", flush=True)
    plot = recorded_curves(
        PLOT,
        [(c.params["models.optimizer.lr"], c.hmean) for c in curves],
        label="learning rate",
        title=f"{len(curves)} recorded runs of the CPU proxy (sroie-mini, 512 x 352)",
    )
    print(f"wrote {plot}", flush=True)
    return CURVES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--stage",
        choices=["all", "repeats", "export"],
        default="all",
        help="all stages; only the seed repeats (beside a random sweep still running); only the curve file",
    )
    args = ap.parse_args()
    if args.stage == "export":
        export()
        return 0
    if args.stage == "repeats":
        repeats(_finished(WORK / "random")[0])
        export()
        return 0
    if not (SROIE / "train.json").is_file():
        sys.exit(f"sroie-mini not found at {SROIE}; set HRNET_SWEEP_SROIE")
    WORK.mkdir(parents=True, exist_ok=True)
    pretrain()
    runs = random_sweep()
    export()
    repeats(runs)
    export()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
