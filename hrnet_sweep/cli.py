"""`hrnet_sweep <command> ...`: a table of thin wrappers.

Each command lives in its stage's module as `main(argv) -> int`; this file only routes,
imports lazily (so `hrnet_sweep check` does not pay for torch) and turns `UserError`
into a one-line message and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

from .errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "train": ("hrnet_sweep.pipeline.train:main", "train one model: hrnet_sweep train preset=NAME key=value ..."),
    "eval": ("hrnet_sweep.metric:main", "CLEval H-Mean of predictions against ground truth"),
    "predict": ("hrnet_sweep.pipeline.predict:main", "checkpoints or a preset -> prediction JSON + submission CSV"),
    "synth": ("hrnet_sweep.synth:main", "render deterministic synthetic receipts"),
    "analyze": (
        "hrnet_sweep.analysis:main",
        "statistics, flags, per-image H-Mean and worst-image overlays of predictions",
    ),
    "compare": ("hrnet_sweep.analysis:main_compare", "compare two or more prediction files image by image"),
    "presets": ("hrnet_sweep.cli:_presets", "list the shipped presets"),
    "sweep": (
        "hrnet_sweep.sweep.launcher:main",
        "create a sweep (W&B, or --local embedded engine) and run one agent per GPU",
    ),
    "agent": ("hrnet_sweep.sweep.agent:main", "run one sweep agent: local sweep folder/id, or entity/project/id"),
    "status": (
        "hrnet_sweep.sweep.status:main_status",
        "runs of a local sweep: state, params, best metric, stop reason",
    ),
    "clean": ("hrnet_sweep.sweep.status:main_clean", "delete checkpoints of runs outside the top N (never the best)"),
    "dashboard": (
        "hrnet_sweep.sweep.dashboard:main",
        "open optuna-dashboard on a local sweep (folder or --storage): its runs, read-only, live",
    ),
    "check": (
        "hrnet_sweep.sweep.check:main",
        "validate and lint sweep YAML files: hrnet_sweep check SWEEP.yaml [--strict]",
    ),
    "explain": (
        "hrnet_sweep.sweep.check:explain_main",
        "show a sweep's Hyperband bands in epochs and runs kept per band",
    ),
    "best": (
        "hrnet_sweep.pipeline.best:main",
        "rank a sweep's finished runs by best val/hmean; --export the winner as a preset",
    ),
    "validate-submission": ("hrnet_sweep.submission:main", "check a submission CSV against the competition format"),
    "kfold": (
        "hrnet_sweep.pipeline.kfold:main",
        "retrain every fold of a preset, one per GPU, resumable: kfold PRESET --folds 0-4",
    ),
    "tune-postprocess": (
        "hrnet_sweep.pipeline.tune:main",
        "tune post-processing on the retrain's cached out-of-fold maps",
    ),
    "demo": ("hrnet_sweep.pipeline.demo:main", "the whole pipeline on synthetic receipts: CPU, offline, no account"),
}


def _presets(argv: Sequence[str]) -> int:
    import argparse

    from .config import PRESET_DIR, list_presets

    ap = argparse.ArgumentParser(
        prog="hrnet_sweep presets",
        description=f"List the presets shipped with the package ({PRESET_DIR}), one name a line: what "
        "preset=NAME takes (a path to a preset YAML works too).",
    )
    ap.parse_args(list(argv))
    print("\n".join(list_presets()))
    return 0


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: hrnet_sweep <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def run_command(name: str, argv: Sequence[str]) -> int:
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hrnet_sweep: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        code = run_command(name, rest)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except UserError as err:
        print(f"hrnet_sweep {name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hrnet_sweep {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


EXIT_SIGPIPE = 128 + 13
"""What a shell reports for a tool whose reader went away (`yes | head -1`): SIGPIPE."""


def _closed_pipe() -> int:
    """The reader of stdout went away (`hrnet_sweep status --json | head -1`): end quietly,
    as a Unix tool does, with the SIGPIPE exit code. Python would print a traceback and
    then complain again when it flushes stdout at exit: stdout goes to /dev/null first."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (an in-process capture)
        pass
    return EXIT_SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
