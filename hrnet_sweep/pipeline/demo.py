"""`hrnet_sweep demo`: the whole workflow on synthetic receipts, on a CPU, offline.

    synth receipts (train, held-out test) -> CPU sweep on the embedded engine (2 agents)
    -> best -> export preset -> 2-fold retrain -> tune post-processing on out-of-fold maps
    -> fold ensemble on the held-out test images -> submission CSV + validation
    -> H-Mean of each fold alone vs the ensemble

No W&B account, no GPU, no download: the models start from scratch (`pretrained:
false`), the sweep runs `sweeps/cpu_demo.yaml` on the embedded engine (logging to W&B
offline), and every step is the public command or function a user would call. The
sizes are budgeted to finish in about 15 minutes on a 2-core laptop; `--fast` is a
smoke run of a few minutes. Everything lands under `--out` (default `outputs/demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ..children import child_env
from ..constants import DATA_ROOT_ENV, METRIC
from ..errors import UserError
from ..numeric import flag
from ..ranking import order_runs

__all__ = ["Budget", "DEFAULT", "FAST", "main", "run_demo"]

# Shipped inside the package (an installed demo needs it); sweeps/cpu_demo.yaml in a
# checkout is a link to it.
DEMO_SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "cpu_demo.yaml"
MARKER = "demo.json"


@dataclass(frozen=True)
class Budget:
    """The knobs that set the demo's run time. The sweep file keeps its searched ranges;
    these fixed values are added to a copy of it (recorded in the demo folder)."""

    train_images: int
    test_images: int
    canvas: tuple[int, int]  # synthetic receipt (width, height)
    text_scale: float
    image_size: tuple[int, int]  # network input (height, width)
    epochs: int
    run_cap: int
    lr: tuple[float, float]  # the part of the sweep's lr range that gets past the plateau in time
    batch_size: int = 2
    agents: int = 2
    folds: tuple[int, ...] = (0, 1)
    tune_grid: tuple[str, ...] = (
        "thresh=0.2,0.3,0.4",
        "box_thresh=0.3,0.5,0.6",
        "unclip_ratio=1.5,2.0",
        "mode=polygon,box",
    )


# Measured on a 2-core CPU (320x256 inputs, 48 training receipts, 16-epoch runs): from
# scratch, DBNet first sits on a plateau (every pixel ~0.25, val H-Mean 0). At batch 2 and
# lr 1e-3 it left it after ~96 steps and reached val H-Mean 0.90 at step 120, 0.95 at
# 144; at batch 2 and lr 2e-3 it was still at 0 after 240 steps, and at batch 4 it took
# ~160 steps with lr 1e-3 or 2.7e-3. So: batch 2, lr around 1e-3, and 10 epochs (240
# steps) leave room for a slow start. Words of these receipts are ~11 px high at 320
# px: smaller inputs lose them under the targets' min_text_size. In a 10-epoch demo sweep
# runs at lr 6.9e-4 and 8.0e-4 left the plateau by epoch 4 and runs at 1.14e-3 and 1.23e-3
# never did: the demo searches 5e-4 to 1e-3. 48 held-out receipts: on 16 the fold vs
# ensemble comparison was noise (the ensemble beat the better fold by 0.002-0.005 on three
# sets of 48, and lost to it by 0.001-0.003 on two sets of 16).
DEFAULT = Budget(
    train_images=60,
    test_images=48,
    canvas=(240, 320),
    text_scale=2.0,
    image_size=(320, 256),
    epochs=10,
    run_cap=4,
    lr=(5e-4, 1e-3),
)
FAST = Budget(
    train_images=20,
    test_images=4,
    canvas=(240, 320),
    text_scale=2.0,
    image_size=(128, 128),
    epochs=1,
    run_cap=2,
    lr=(5e-4, 1e-3),
    tune_grid=("thresh=0.2,0.3", "box_thresh=0.3,0.5", "unclip_ratio=1.5", "mode=polygon"),
)


class _Clock:
    def __init__(self, say: Callable[[str], None]):
        self.say, self.t0, self.stages = say, time.monotonic(), {}

    def stage(self, name: str, what: str) -> _Stage:
        return _Stage(self, name, what)


class _Stage:
    def __init__(self, clock: _Clock, name: str, what: str):
        self.clock, self.name, self.what = clock, name, what

    def __enter__(self):
        self.start = time.monotonic()
        n = len(self.clock.stages) + 1
        self.clock.say(f"\n== [{n}/7] {self.what}  (t={self.start - self.clock.t0:.0f} s)")
        return self

    def __exit__(self, *exc):
        dt = time.monotonic() - self.start
        self.clock.stages[self.name] = round(dt, 1)
        if exc[0] is None:
            self.clock.say(f"   done in {dt:.0f} s")
        return False


def _sweep_yaml(budget: Budget, path: Path) -> Path:
    """`sweeps/cpu_demo.yaml` with the demo's budget added as fixed values."""
    doc = yaml.safe_load(DEMO_SWEEP.read_text(encoding="utf-8"))
    params = doc["parameters"]
    fixed = {
        "trainer.max_epochs": budget.epochs,
        # half a cosine period more than the run: the lr is still high when the plateau ends
        "models.scheduler.T_max": 2 * budget.epochs,
        "data.image_height": budget.image_size[0],
        "data.image_width": budget.image_size[1],
        "data.batch_size": budget.batch_size,
        "data.num_workers": 0,  # one core per agent: loader workers would only compete
        # val/hmean is 0 on the plateau: patience would end every run before it learns
        "callbacks.early_stopping.enabled": False,
        "trainer.progress_bar": False,
    }
    for key, value in fixed.items():
        params[key] = {"value": value}
    lr = params["models.optimizer.lr"]
    lo, hi = max(budget.lr[0], lr["min"]), min(budget.lr[1], lr["max"])
    if lo < hi:
        lr["min"], lr["max"] = lo, hi
    doc["run_cap"] = budget.run_cap
    doc["description"] = f"{doc.get('description', '')} (hrnet_sweep demo budget)"
    text = (
        f"# Written by hrnet_sweep demo from {DEMO_SWEEP.name}: its search space, with the demo's fixed sizes.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    path.write_text(text, encoding="utf-8")
    return path


def _watch_sweep(root: Path, stop: threading.Event, say: Callable[[str], None], every: float = 20.0) -> None:
    """Print the sweep's progress while the agents run."""
    from ..sweep.engine import LocalSweep

    last = None
    while not stop.wait(every):
        try:
            runs = LocalSweep(root).runs()
        except Exception:  # noqa: BLE001 - the journal may be mid-write; try again later
            continue
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.state] = counts.get(r.state, 0) + 1
        ranked = order_runs(runs)
        best = ranked[0] if ranked else None
        epochs = ", ".join(f"{r.run_id}: epoch {len(r.history)}" for r in runs if r.state == "running")
        line = (
            f"   sweep: {len(runs)} run(s) "
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + (f"; best {METRIC} so far {best.best:.4f} ({best.run_id})" if best else "")
            + (f"; running {epochs}" if epochs else "")
        )
        if line != last:
            say(line)
            last = line


def _fold_vs_ensemble(target, test_dir: Path, gt_json: Path, *, tta: bool) -> dict[str, dict]:
    """H-Mean of every fold alone and of their probability-map average, one inference
    per fold and image, with the retrain's tuned post-processing."""
    from ..dbnet.inference import load_checkpoint, postprocess_map
    from ..formats import integer_points, load_annotations
    from ..metric import evaluate
    from .ensemble import fold_and_ensemble_maps

    folds = target.finished_folds()
    models = [load_checkpoint(c) for _, c, _ in folds]
    pp = target.cfg.models.postprocess
    gt = {n: a.polygons() for n, a in load_annotations(gt_json).items()}
    preds: dict[str, dict] = {f"fold {k}": {} for k, _, _ in folds}
    preds["ensemble"] = {}
    for name, per_fold, ens in fold_and_ensemble_maps(models, test_dir, sorted(gt), tta_flip=tta):
        for (k, _, _), prob in zip(folds, per_fold):
            preds[f"fold {k}"][name] = postprocess_map(prob, pp)[0]
        preds["ensemble"][name] = postprocess_map(ens, pp)[0]
    out = {}
    for label, p in preds.items():
        # integer points, as the submission CSV holds them: the H-Mean `hrnet_sweep eval` gives
        r = evaluate(gt, {n: [integer_points(poly) for poly in polys] for n, polys in p.items()})
        out[label] = {
            "hmean": r.hmean,
            "precision": r.precision,
            "recall": r.recall,
            "detections": sum(len(v) for v in p.values()),
        }
    return out


def _print_results(rows: dict[str, dict], title: str, say: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("model", "H-Mean", "precision", "recall", "detections"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for label, r in rows.items():
        t.add_row(label, f"{r['hmean']:.4f}", f"{r['precision']:.4f}", f"{r['recall']:.4f}", str(r["detections"]))
    Console().print(t)


def _prepare(out: Path, say: Callable[[str], None]) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"{out} exists and is not a demo folder; choose another --out")
        say(f"removing the previous demo run in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"state": "running", "started": time.time()}), encoding="utf-8")


def _make_data(budget: Budget, data: Path, test: Path, seed: int, say: Callable[[str], None]) -> None:
    from ..synth import generate, korean_note

    w, h = budget.canvas
    generate(
        data,
        num_images=budget.train_images,
        seed=seed,
        width=w,
        height=h,
        text_scale=budget.text_scale,
        splits={"train": budget.train_images},
        progress=False,
    )
    generate(
        test,
        num_images=budget.test_images,
        seed=seed + 1,
        width=w,
        height=h,
        text_scale=budget.text_scale,
        splits={"test": budget.test_images},
        progress=False,
    )
    say(
        f"   {data / 'train.json'} ({budget.train_images} images), held out: {test / 'test.json'} "
        f"({budget.test_images} images, seed {seed + 1})"
    )
    note = korean_note()
    if note:  # once per demo; `synth` itself says it only when asked for Korean
        say(f"   {note}")


def _run_sweep(budget: Budget, out: Path, say: Callable[[str], None]) -> Path:
    """The sweep on the embedded engine with the budget's agents; its folder."""
    from ..sweep.engine import LocalSweep
    from ..sweep.launcher import run_agents

    spec = _sweep_yaml(budget, out / "cpu_demo.yaml")
    sweep = LocalSweep.create(spec, sweeps_root=out / "sweeps")
    say(f"   local sweep {sweep.sweep_id} in {sweep.root} (status: hrnet_sweep status {sweep.root})")
    env = {**child_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_sweep, args=(sweep.root, stop, say), daemon=True)
    watcher.start()
    try:
        result = run_agents(
            str(sweep.root),
            mode="local",
            gpus=[],
            agents=budget.agents,
            stagger_s=2.0,
            max_restarts=1,
            log_dir=sweep.root / "agents",
            env=env,
            cwd=str(out),
            out=lambda s: say(f"   {s}"),
        )
    finally:
        stop.set()
    if result.interrupted is not None:
        raise KeyboardInterrupt
    return sweep.root


def _export_best(sweep_root: Path, out: Path, say: Callable[[str], None]):
    """The best finished run as `<out>/best.yaml`; (preset path, the winner)."""
    from ..ranking import rank_runs
    from .best import export_preset, local_runs, print_table

    runs = local_runs(sweep_root)
    ranking = rank_runs(runs.runs)
    print_table(runs, ranking, 5)
    if ranking.best is None:
        raise UserError(
            f"no sweep run finished with a finite {METRIC}; see {sweep_root / 'agents'} and {sweep_root / 'runs'}"
        )
    preset = export_preset(out / "best.yaml", runs, ranking.best, force=True)
    say(
        f"   exported {preset} (run {ranking.best.run.id}, best {METRIC} {ranking.best.best:.4f} "
        f"at epoch {ranking.best.epoch})"
    )
    return preset, ranking.best


def _retrain(preset: Path, budget: Budget, retrain: Path, say: Callable[[str], None]) -> None:
    from .kfold import run_kfold

    summary = run_kfold(
        str(preset),
        list(budget.folds),
        gpus=[],
        out=retrain,
        cpu_jobs=len(budget.folds),
        printer=lambda s: say(f"   {s}"),
    )
    bad = [k for k, f in summary["folds"].items() if f.get("state") != "finished"]
    if bad:
        raise UserError(f"folds {bad} did not finish; see the fold logs in {retrain}")


def _tune(retrain: Path, budget: Budget, say: Callable[[str], None]) -> tuple[dict, Path]:
    """Tune the post-processing on the out-of-fold maps and write it into the preset;
    (the chosen setting, the map cache folder)."""
    from .ensemble import OOF_DIR, resolve_retrain
    from .tune import Grid, apply_tuned_postprocess, parse_grid, print_table, tune_retrain

    target = resolve_retrain(retrain)
    grid = parse_grid(list(budget.tune_grid), Grid(refine=True))
    best, baseline, table = tune_retrain(
        target, grid, workers=min(2, os.cpu_count() or 1), progress=False, say=lambda s: say(f"   {s}")
    )
    print_table(table, baseline, 5)
    for path in apply_tuned_postprocess(target, best, baseline, table):
        say(f"   wrote {path}")
    return best, target.root / OOF_DIR


def _predict(preset: Path, test: Path, csv: Path) -> None:
    from ..submission import main as validate_main
    from .predict import main as predict_main

    rc = predict_main(
        [str(preset), "--images", str(test / "images"), "--out", str(csv), "--gt", str(test / "test.json")]
    )
    valid = validate_main([str(csv), "--images", str(test / "images")]) == 0
    if rc != 0 or not valid:
        raise UserError(f"{csv} is not a valid submission")


def run_demo(
    out: str | os.PathLike = "outputs/demo",
    *,
    budget: Budget = DEFAULT,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Run the demo pipeline; return its summary (also written to `<out>/demo.json`)."""
    from ..files import atomic_write_json
    from .ensemble import resolve_retrain

    say = say or (lambda s: print(s, flush=True))
    out = Path(out).resolve()
    _prepare(out, say)
    clock = _Clock(say)
    data, test, retrain, csv = out / "data", out / "test", out / "best-kfold", out / "submission.csv"
    os.environ[DATA_ROOT_ENV] = str(data)  # every training process reads its data from here
    os.environ.setdefault("WANDB_SILENT", "true")
    say(f"hrnet_sweep demo: synthetic receipts, CPU, offline; outputs in {out}")
    say(
        f"budget: {budget.train_images} training + {budget.test_images} held-out test receipts, "
        f"{budget.image_size[0]}x{budget.image_size[1]} px, {budget.epochs} epochs, {budget.run_cap} sweep runs on "
        f"{budget.agents} agents, folds {list(budget.folds)}"
    )
    with clock.stage("synth", "render synthetic receipts (train + held-out test)"):
        _make_data(budget, data, test, seed, say)
    with clock.stage("sweep", f"sweep on the embedded engine: {budget.run_cap} runs, {budget.agents} agents"):
        sweep_root = _run_sweep(budget, out, say)
    with clock.stage("best", "best finished run -> exported preset"):
        preset, winner = _export_best(sweep_root, out, say)
    with clock.stage("kfold", f"retrain folds {list(budget.folds)} with the best parameters"):
        _retrain(preset, budget, retrain, say)
    with clock.stage("tune", "tune post-processing on the cached out-of-fold maps"):
        best, oof = _tune(retrain, budget, say)
    with clock.stage("predict", "fold ensemble on the held-out test receipts -> CSV, validated"):
        _predict(preset, test, csv)
    with clock.stage("report", "H-Mean: each fold alone vs the ensemble (held-out test receipts)"):
        rows = _fold_vs_ensemble(resolve_retrain(retrain), test / "images", test / "test.json", tta=False)
        _print_results(rows, f"held-out synthetic receipts ({budget.test_images} images, with their GT)", say)
    total = time.monotonic() - clock.t0
    doc = {
        "state": "finished",
        "seconds": round(total, 1),
        "stages": clock.stages,
        "budget": asdict(budget),
        "results": rows,
        "best_run": {"id": winner.run.id, "best": winner.best, "epoch": winner.epoch},
        "postprocess": {k: best[k] for k in ("thresh", "box_thresh", "unclip_ratio", "use_polygon")},
        "outputs": {
            "data": str(data),
            "test": str(test),
            "sweep": str(sweep_root),
            "preset": str(preset),
            "retrain": str(retrain),
            "summary": str(retrain / "kfold_summary.json"),
            "oof_maps": str(oof),
            "submission": str(csv),
            "predictions": str(csv.with_suffix(".json")),
        },
    }
    atomic_write_json(out / MARKER, doc, indent=2)
    _print_outputs(doc, total, sweep_root, preset, say)
    return doc


def _print_outputs(doc: dict, total: float, sweep_root: Path, preset: Path, say: Callable[[str], None]) -> None:
    say(
        f"\ndemo finished in {total / 60:.1f} min ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in doc["stages"].items())
        + ")"
    )
    say("outputs:")
    for k, v in doc["outputs"].items():
        say(f"  {k:<12} {v}")
    say(f"next: hrnet_sweep best {sweep_root}   |   hrnet_sweep predict {preset} --images DIR --out sub.csv")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep demo",
        description=(
            "Run the whole workflow on synthetic receipts on this machine: no W&B account, no GPU, no download."
        ),
    )
    ap.add_argument(
        "--out", default="outputs/demo", help="demo folder (default outputs/demo; replaced if it holds an earlier demo)"
    )
    ap.add_argument("--fast", action="store_true", help="a few-minute smoke run (tiny sizes; low H-Mean)")
    ap.add_argument("--seed", type=flag(int), default=0)
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    run_demo(args.out, budget=FAST if args.fast else DEFAULT, seed=args.seed)
    return 0
