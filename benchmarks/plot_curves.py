"""Plot validation H-Mean against training minutes for runs of `benchmarks/train_cpu.py`
(its summary JSON files): tuned at each validation (solid) and at the preset's fixed
post-processing (dashed); one panel per `--panel TITLE LABEL=summary.json ...`.

    python benchmarks/plot_curves.py --out docs/train_cpu_curves.png --target 0.95 \\
        --panel "val.json" "512=a.json" "768x544=b.json" --panel "fold 0" "512=c.json" "768x544=d.json"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hrnet_sweep.analysis.plots import Curve, training_curves  # noqa: E402


def curve(label: str, summary: dict) -> Curve:
    """A summary's epochs as a curve; minutes at the end of each epoch (validation included)."""
    minutes, tuned, fixed, t = [], [], [], 0.0
    for row in summary["curve"]:
        t += row["epoch_s"] / 60
        minutes.append(t)
        tuned.append(row["hmean"] if row["tuned"] else None)
        fixed.append(row["hmean_fixed"] if row["tuned"] else row["hmean"])
    return Curve(label, minutes, tuned, fixed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--panel", action="append", nargs="+", required=True, metavar="TITLE LABEL=summary.json", help="one panel"
    )
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--target", type=float, help="draw a horizontal line at this H-Mean")
    ap.add_argument("--title", default="validation H-Mean while training from scratch (2 CPU cores)")
    args = ap.parse_args(argv)
    panels = []
    for title, *runs in args.panel:
        if not runs:
            print(f"error: --panel {title!r}: no LABEL=summary.json after the title", file=sys.stderr)
            return 2
        curves = []
        for spec in runs:
            label, sep, path = spec.partition("=")
            if not sep:
                print(f"error: {spec!r} is not LABEL=summary.json", file=sys.stderr)
                return 2
            try:
                curves.append(curve(label, json.loads(Path(path).read_text())))
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(f"error: {path}: not a train_cpu.py summary ({e})", file=sys.stderr)
                return 2
        panels.append((title, curves))
    print(f"wrote {training_curves(args.out, panels, target=args.target, title=args.title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
