"""`hrnet_sweep <command> ...`: a table of thin wrappers.

Each command lives in its stage's module as `main(argv) -> int`; this file only routes,
imports lazily (so `hrnet_sweep check` does not pay for torch) and turns `UserError`
into a one-line message and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Sequence

from .errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "train": ("hrnet_sweep.train:main", "train one model: hrnet_sweep train preset=NAME key=value ..."),
    "eval": ("hrnet_sweep.metric:main", "CLEval H-Mean of predictions against ground truth"),
    "predict": ("hrnet_sweep.predict:main", "checkpoints or a preset -> prediction JSON + submission CSV"),
    "synth": ("hrnet_sweep.synth:main", "render deterministic synthetic receipts"),
    "presets": ("hrnet_sweep.cli:_presets", "list the shipped presets"),
}


def _presets(argv: Sequence[str]) -> int:
    from .config import list_presets

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
        return run_command(name, rest)
    except UserError as err:
        print(f"hrnet_sweep {name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hrnet_sweep {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
