"""`hrnet_sweep check SWEEP.yaml` and `hrnet_sweep explain SWEEP.yaml`.

`check` validates a sweep file (W&B schema, config keys and values, see `spec.py`) and
lints it for the mistakes that cost GPU days: a search range that cannot return to the
preset's known-good value, an eta_min that can exceed the lr, a cosine T_max longer
than the run, Hyperband bands that never fire, a metric training never logs (or the
wrong goal for it), bare `python` in the command, list positions as keys, values that
do not survive `wandb agent`'s `str()` formatting.

`explain` prints the Hyperband schedule in epochs and how many runs each band keeps.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import Config, load_config, parse_value
from ..constants import METRIC, VAL_PRECISION, VAL_RECALL
from ..errors import ConfigError, UserError
from ..numeric import flag
from ._validate import validate_sweep
from .command import ARG_MACROS, format_value
from .hyperband import explain_bands
from .spec import STRICT_DEFAULT, SweepSpec
from .sweepfile import read_sweep_doc

__all__ = ["Finding", "check_sweep", "explain_main", "load_checked", "main"]

LOGGED_METRICS = (METRIC, VAL_PRECISION, VAL_RECALL)
"""What training logs, once per validation epoch (DESIGN.md section 6)."""
_BARE_PYTHON = re.compile(r"^(.*/)?python(\d+(\.\d+)?)?(\.exe)?$")
_TRAIN_ARG_FORMS = ("args", "args_no_hyphens")  # what `python -m hrnet_sweep.train` parses
_TRAINER_MODULES = ("hrnet_sweep.train", "hrnet_sweep.pipeline.train")
_TRAINER_SCRIPTS = ("hrnet_sweep/train.py", "hrnet_sweep/pipeline/train.py")


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    key: str
    message: str
    check_only: bool = False  # an error `check` reports but `sweep` and the engine still run (`load_checked`)


def check_sweep(path: str | Path) -> list[Finding]:
    """All findings for one sweep file, errors first within each stage."""
    try:
        doc, lines = read_sweep_doc(path)
    except UserError as err:  # ConfigError (YAML) or DataError (missing, a folder, a FIFO, not UTF-8)
        return [Finding("error", "", str(err))]
    spec, errors = validate_sweep(doc, str(path), lines=lines)
    findings = [Finding("error", key, msg) for key, msg in errors]
    findings += _lint_metric(doc)
    findings += _lint_command(doc)
    findings += _lint_early_terminate(doc)
    if spec is not None:
        findings += _lint_round_trip(spec)
        findings += _lint_against_presets(spec)
    return findings


def load_checked(path: str | Path) -> SweepSpec:
    """`load_sweep`, refusing every error `check` reports as well (a metric training never
    logs, the wrong goal, a value `wandb agent`'s str() turns into another), so `sweep` and
    the engine refuse what `check` refuses. The one exception is a `null` value: the run
    gets the text 'None', a valid value, only not the one written (`check` says so)."""
    from .sweepfile import load_sweep

    errors = [f for f in check_sweep(path) if f.level == "error" and not f.check_only]
    if errors:
        lines = [f.message if f.message.startswith(str(path)) else f"{path}: {f.key}: {f.message}" for f in errors]
        raise ConfigError(f"{path}: invalid sweep file (details: hrnet_sweep check {path}):\n  " + "\n  ".join(lines))
    return load_sweep(path)


# ----------------------------------------------------------------------------- lints on the document


def _lint_metric(doc: dict) -> list[Finding]:
    m = doc.get("metric")
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        return []
    name, goal = m["name"], m.get("goal")
    out = []
    if name not in LOGGED_METRICS:
        out.append(
            Finding(
                "error",
                "metric.name",
                f"training never logs {name!r}; it logs "
                f"{', '.join(LOGGED_METRICS)} once per validation epoch (use {METRIC})",
            )
        )
        return out
    if goal != "maximize":
        shown = "missing (W&B then minimizes)" if goal is None else f"{goal!r}"
        out.append(
            Finding("error", "metric.goal", f"goal is {shown}, but {name} is higher-is-better: set goal: maximize")
        )
    if name != METRIC:
        out.append(
            Finding(
                "warning",
                "metric.name",
                f"the sweep optimizes {name}, but checkpoints, early stopping and `hrnet_sweep best` use {METRIC}",
            )
        )
    return out


def _lint_command(doc: dict) -> list[Finding]:
    cmd = doc.get("command")
    if not isinstance(cmd, list):
        return []
    items = [str(c) for c in cmd]
    out = []
    for item in items:
        if _BARE_PYTHON.match(item):
            out.append(
                Finding(
                    "warning",
                    "command",
                    f"command runs {item!r}: use ${{interpreter}} so the run uses "
                    "the agent's Python (the one hrnet-sweep is installed in)",
                )
            )
        elif "${" in item and not (item.startswith("${") and item.endswith("}")) and "${envvar:" not in item:
            out.append(
                Finding(
                    "warning",
                    "command",
                    f"{item!r}: W&B expands a macro only when it is the whole "
                    "argument; this one is passed on as written",
                )
            )
    macros = {i[2:-1] for i in items if i.startswith("${") and i.endswith("}")}
    arg_forms = macros & set(ARG_MACROS)
    if not arg_forms:
        out.append(
            Finding(
                "warning",
                "command",
                "command passes no parameters (${args_no_hyphens}, ${args}, "
                "...): every run would train the preset unchanged",
            )
        )
    runs_train, other = _runs_trainer(items, doc.get("program"))
    if not runs_train:
        close = difflib.get_close_matches(other or "", _TRAINER_MODULES + _TRAINER_SCRIPTS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        what = f"runs {other!r}, not the trainer" if other else "does not run the trainer"
        out.append(
            Finding(
                "warning",
                "command",
                f"command {what}{hint}: a run is "
                "`${interpreter} -m hrnet_sweep.train ${args_no_hyphens}`, else it logs no "
                f"{METRIC} and the sweep has nothing to rank",
            )
        )
    if runs_train and arg_forms - set(_TRAIN_ARG_FORMS):
        odd = ", ".join("${" + m + "}" for m in sorted(arg_forms - set(_TRAIN_ARG_FORMS)))
        out.append(
            Finding(
                "warning",
                "command",
                f"hrnet_sweep.train reads key=value overrides; {odd} is not in that form: use ${{args_no_hyphens}}",
            )
        )
    return out


def _runs_trainer(items: list[str], program: Any) -> tuple[bool, str | None]:
    """Whether a command runs `hrnet_sweep.train` (as a module, a script, or the
    `hrnet_sweep train` command); if not, the module or script it runs instead."""
    items = [str(program) if i == "${program}" and program else i for i in items]
    for i, item in enumerate(items):
        nxt = items[i + 1] if i + 1 < len(items) else ""
        if item == "-m":
            return nxt in _TRAINER_MODULES or (nxt == "hrnet_sweep" and items[i + 2 : i + 3] == ["train"]), nxt
        if item.replace("\\", "/").endswith(_TRAINER_SCRIPTS):
            return True, None
        if Path(item).name == "hrnet_sweep" and nxt == "train":
            return True, None
    scripts = [i for i in items if i.endswith(".py") or "/" in i and not i.startswith("${")]
    return False, next((i for i in scripts if not _BARE_PYTHON.match(i) and i != "/usr/bin/env"), None)


def _lint_early_terminate(doc: dict) -> list[Finding]:
    et = doc.get("early_terminate")
    out = []
    if isinstance(et, dict) and et.get("type") == "hyperband":
        if "strict" not in et:
            out.append(
                Finding(
                    "warning",
                    "early_terminate.strict",
                    f"strict is not set: W&B's docs say it defaults to false, its engine fills in "
                    f"true (we follow the engine: {str(STRICT_DEFAULT).lower()}); write it out",
                )
            )
        if "max_iter" in et and "min_iter" in et:
            out.append(
                Finding(
                    "warning",
                    "early_terminate.min_iter",
                    "both max_iter and min_iter are set: W&B uses max_iter and s, and ignores min_iter",
                )
            )
    return out


# ----------------------------------------------------------------------------- lints on values


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _lint_round_trip(spec: SweepSpec) -> list[Finding]:
    """`wandb agent` writes values with str(); training parses `key=value` as YAML.
    A value that does not come back as itself reaches the run as something else."""
    macros = {c[2:-1] for c in spec.command if c.startswith("${") and c.endswith("}")}
    if not macros & set(_TRAIN_ARG_FORMS):
        return []
    out = []
    for name, p in spec.parameters.items():
        if p.kind == "distribution":
            continue
        for v in p.candidates():
            text = format_value(v)
            back = parse_value(text)
            if _same(back, v):
                continue
            if isinstance(v, str) and not isinstance(back, str):
                out.append(
                    Finding(
                        "error",
                        name,
                        f"value {v!r} is text, but the run gets {name}={text} and "
                        f"training reads it as the number {back!r}; a text value must not look like a "
                        "number",
                    )
                )
            else:
                out.append(
                    Finding(
                        "error",
                        name,
                        f"value {v!r} is passed as {name}={text} and training reads "
                        f"{back!r}; use a value that survives str() (e.g. no null, no quoted numbers)",
                        check_only=v is None,
                    )
                )
    return out


def _span(spec: SweepSpec, key: str, cfg: Config) -> tuple[float, float] | None:
    """Smallest and largest value `key` can take in the sweep's runs (numbers only)."""
    p = spec.parameters.get(key)
    if p is None:
        vals = [cfg.get(key)]
    elif p.kind == "distribution":
        return p.bounds()
    else:
        vals = p.candidates()
    nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (min(nums), max(nums)) if nums and len(nums) == len(vals) else None


def _possible(spec: SweepSpec, key: str, cfg: Config) -> list[Any]:
    p = spec.parameters.get(key)
    return [cfg.get(key)] if p is None or p.kind == "distribution" else p.candidates()


def _lint_against_presets(spec: SweepSpec) -> list[Finding]:
    out: list[Finding] = []
    fixed = {k: v for k, v in spec.fixed().items() if k != "preset"}
    for preset in spec.presets:
        tag = f" (preset {preset})"
        try:
            base = load_config({"preset": preset})
            cfg = load_config({"preset": preset, **fixed})
        except ConfigError:
            continue  # reported by validation
        out += _lint_excludes_preset(spec, base, tag)
        out += _lint_schedule(spec, cfg, tag)
        out += _lint_hyperband(spec, cfg, tag)
    # one line per problem, even when several presets share it
    return list(dict.fromkeys(out))


def _lint_excludes_preset(spec: SweepSpec, base: Config, tag: str) -> list[Finding]:
    out = []
    for name, p in spec.searched().items():
        if name == "preset":
            continue
        current = base.get(name)
        current = list(current) if isinstance(current, tuple) else current
        if p.kind == "values":
            if not any(_same(current, v) for v in p.candidates()):
                out.append(
                    Finding(
                        "warning",
                        name,
                        f"values {list(p.values or ())} exclude the preset's current "
                        f"value {current!r}{tag}: the sweep cannot confirm the known-good setting",
                    )
                )
            continue
        bounds = p.bounds()
        if bounds is None or not isinstance(current, (int, float)) or isinstance(current, bool):
            continue
        lo, hi = bounds
        if math.isinf(lo) and math.isinf(hi):
            continue
        slack = 1e-9 * max(abs(lo), abs(hi), 1e-30)
        if not lo - slack <= current <= hi + slack:
            out.append(
                Finding(
                    "warning",
                    name,
                    f"range {lo:g}..{hi:g} ({p.distribution}) excludes the preset's "
                    f"current value {current:g}{tag}: the sweep cannot return to the known-good setting",
                )
            )
    return out


def _lint_schedule(spec: SweepSpec, cfg: Config, tag: str) -> list[Finding]:
    if "cosine" not in _possible(spec, "models.scheduler.name", cfg):
        return []
    out = []
    lr, eta_min = _span(spec, "models.optimizer.lr", cfg), _span(spec, "models.scheduler.eta_min", cfg)
    if lr and eta_min and eta_min[1] > lr[0]:
        out.append(
            Finding(
                "warning",
                "models.scheduler.eta_min",
                f"eta_min can exceed lr (eta_min up to {eta_min[1]:g}, lr down to {lr[0]:g}){tag}: "
                "such runs anneal the learning rate upwards; keep max eta_min below min lr",
            )
        )
    t_max, epochs = _span(spec, "models.scheduler.T_max", cfg), _span(spec, "trainer.max_epochs", cfg)
    if t_max and epochs and t_max[1] > epochs[0]:
        out.append(
            Finding(
                "warning",
                "models.scheduler.T_max",
                f"T_max can be {t_max[1]:g} > max_epochs {epochs[0]:g}{tag}: the cosine schedule is cut "
                "off before it reaches eta_min",
            )
        )
    return out


def _run_length(spec: SweepSpec, cfg: Config) -> tuple[int, int, int | None]:
    """(longest max_epochs, validation interval, early-stopping patience or None)."""
    epochs = _span(spec, "trainer.max_epochs", cfg)
    max_epochs = int(epochs[1]) if epochs else cfg.trainer.max_epochs
    every = _span(spec, "trainer.check_val_every_n_epoch", cfg)
    n = int(every[0]) if every else cfg.trainer.check_val_every_n_epoch
    es = cfg.callbacks.early_stopping
    patience = es.patience if es.enabled else None
    return max_epochs, n, patience


def _lint_hyperband(spec: SweepSpec, cfg: Config, tag: str) -> list[Finding]:
    hb = spec.early_terminate
    if hb is None:
        return []
    max_epochs, n, patience = _run_length(spec, cfg)
    infos = explain_bands(hb, max_epochs, patience, check_val_every_n_epoch=n)
    n_vals = max_epochs // n
    out = []
    firing = [b for b in infos if b.fires]
    if not firing:
        first = hb.bands()[0]
        out.append(
            Finding(
                "warning",
                "early_terminate",
                f"Hyperband can never stop a run early{tag}: its first band is the {first}th logged "
                f"value (epoch {first * n}), but a run validates {n_vals} time(s) in {max_epochs} epochs "
                f"(check_val_every_n_epoch {n}); lower min_iter",
            )
        )
    elif patience is not None and firing[0].band > patience + 1:
        out.append(
            Finding(
                "warning",
                "early_terminate",
                f"early stopping (patience {patience}) ends a stalled run at validation {patience + 1}, "
                f"before Hyperband's first band at validation {firing[0].band}{tag}: Hyperband then "
                "only judges runs that are still improving; lower min_iter or raise patience",
            )
        )
    if hb.max_iter is not None:
        never = [b.band for b in infos if b.band > n_vals]
        if never:
            out.append(
                Finding(
                    "warning",
                    "early_terminate.max_iter",
                    f"bands {never} lie past the last validation ({n_vals}){tag}: they never fire; "
                    f"max_iter {hb.max_iter} should be about the number of validations",
                )
            )
    return out


# ----------------------------------------------------------------------------- CLI


def _print_findings(path: str, findings: Sequence[Finding], strict: bool) -> None:
    if not findings:
        print(f"{path}: OK")
        return
    width = max(len(f.key) for f in findings)
    print(f"{path}:")
    for f in findings:
        level = "error" if strict else f.level
        print(f"  {level:<7}  {f.key:<{width}}  {f.message}")
    n_err = sum(1 for f in findings if strict or f.level == "error")
    print(f"  {n_err} error(s), {len(findings) - n_err} warning(s)")


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep check SWEEP.yaml [...] [--strict]`: 0 when clean, 2 on errors."""
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep check",
        description="Validate sweep YAML files (W&B schema, config keys and values) and lint them: search ranges "
        "that exclude the preset's value, eta_min above lr, T_max past the run, Hyperband bands that never fire, a "
        "metric training never logs, bare python in the command. Exit 2 on an error (--strict: on a warning too).",
    )
    ap.add_argument("sweeps", nargs="+", help="sweep YAML file(s)")
    ap.add_argument("--strict", action="store_true", help="treat warnings as errors")
    args = ap.parse_args(argv)
    failed = False
    for path in args.sweeps:
        findings = check_sweep(path)
        _print_findings(path, findings, args.strict)
        failed |= any(args.strict or f.level == "error" for f in findings)
    return 2 if failed else 0


def explain_main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep explain SWEEP.yaml [--runs N]`: the Hyperband schedule in epochs."""
    from .sweepfile import load_sweep

    ap = argparse.ArgumentParser(prog="hrnet_sweep explain", description="show when Hyperband judges runs")
    ap.add_argument("sweep", help="sweep YAML file")
    ap.add_argument(
        "--runs",
        type=flag(int, ge=1),
        default=None,
        help="runs reaching the first band (default: the sweep's run_cap, else 27)",
    )
    args = ap.parse_args(argv)
    spec = load_sweep(args.sweep)
    args.runs = args.runs or spec.run_cap or 27
    hb = spec.early_terminate
    print(f"{args.sweep}: method {spec.method}, metric {spec.metric_name} ({spec.metric_goal})")
    if hb is None:
        print("  no early_terminate: every run trains to max_epochs (or until early stopping ends it)")
        return 0
    how = f"min_iter {hb.min_iter}" if hb.max_iter is None else f"max_iter {hb.max_iter}, s {hb.s}"
    print(
        f"  hyperband {how}, eta {hb.eta:g}, strict {str(hb.strict).lower()}: a band is the N-th logged "
        f"{spec.metric_name} (one per validation)"
    )
    fixed = {k: v for k, v in spec.fixed().items() if k != "preset"}
    seen = set()
    for preset in spec.presets:
        cfg = load_config({"preset": preset, **fixed})
        max_epochs, n, patience = _run_length(spec, cfg)
        if (max_epochs, n, patience) in seen:
            continue
        seen.add((max_epochs, n, patience))
        es = f"early stopping patience {patience}" if patience is not None else "no early stopping"
        print(
            f"\n  preset {preset}: max_epochs {max_epochs}, validation every {n} epoch(s) "
            f"({max_epochs // n} values per run), {es}"
        )
        print(f"  {'band':>4}  {'value #':>7}  {'epoch':>5}  {'reach':>5}  {'kept':>4}  note")
        for k, b in enumerate(explain_bands(hb, max_epochs, patience, args.runs, check_val_every_n_epoch=n), 1):
            note = b.note or ("" if b.fires else "does not fire")
            print(f"  {k:>4}  {b.band:>7}  {b.epoch:>5}  {b.reached:>5}  {b.kept:>4}  {note}")
    rule = "value at the band" if hb.strict else "best value so far"
    print(
        f"\n  A running run is stopped at a band when its {rule} is worse than the top-1/{hb.eta:g} "
        "threshold of all runs that reached that band (ties survive)."
    )
    print(
        "  'kept' assumes every run reaches each band together with distinct values; on a live sweep runs "
        "arrive one at a time, so the first ones face fewer rivals and more survive."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
