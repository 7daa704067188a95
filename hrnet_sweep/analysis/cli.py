"""`hrnet_sweep analyze` / `hrnet_sweep compare`: thin wrappers that parse the arguments,
call `analyze` / `compare` and print a rich table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..numeric import flag
from ._load import _safe
from ._model import _ERRORS, _FLAGS
from .comparison import CompareReport, compare
from .report import AnalysisReport, analyze


def _print_analysis(report: AnalysisReport) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.summary
    box, out = s["boxes"], s["count_outliers"]
    table = Table(title=f"hrnet_sweep analyze: {Path(s['inputs']['predictions']).name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", str(s["images"]["total"]))
    table.add_row(
        "boxes",
        f"{box['total']:,} (per image mean {box['mean']:.1f}, median {box['median']:g}, "
        f"min {box['min']}, max {box['max']})",
    )
    table.add_row("too few / too many", f"{len(out['few'])} / {len(out['many'])} images")
    for f in _FLAGS:
        table.add_row(f.replace("_", " "), f"{s['flags'][f]['boxes']} boxes in {s['flags'][f]['images']} images")
    if s["metric"]:
        m = s["metric"]
        table.add_row("H-Mean (macro)", f"{m['hmean']:.4f} (P {m['precision']:.4f}, R {m['recall']:.4f})")
        for e in _ERRORS:
            table.add_row(e.replace("_", " "), f"{s['errors'][e]['total']} in {s['errors'][e]['images']} images")
    if s["worst"]:
        label = "worst images" if s["worst_by"] == "hmean" else "most flagged"
        table.add_row(
            label, ", ".join(w["image"] + (f" ({w['hmean']:.3f})" if "hmean" in w else "") for w in s["worst"][:5])
        )
    console = Console()
    console.print(table)
    console.print(f"report: {report.report_path}")


def _print_compare(report: CompareReport) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.summary
    names = s["inputs"]["names"]
    # Models as columns: a few models fit an 80-column terminal, ten statistics would not.
    table = Table(title=f"hrnet_sweep compare ({s['images']} images)")
    table.add_column("", style="bold")
    for n in names:
        table.add_column(n, justify="right")
    models = [s["models"][n] for n in names]
    table.add_row("boxes", *(f"{m['boxes']['total']:,}" for m in models))
    table.add_row("median per image", *(f"{m['boxes']['median']:g}" for m in models))
    table.add_row(
        "too few / many", *(f"{len(m['count_outliers']['few'])} / {len(m['count_outliers']['many'])}" for m in models)
    )
    for f in ("tiny", "huge", "extreme_aspect", "under_4_points"):
        table.add_row(f.replace("_", " "), *(str(m["flags"][f]["boxes"]) for m in models))
    if s["inputs"]["ground_truth"] is not None:
        for k in ("precision", "recall", "hmean"):
            table.add_row(k if k != "hmean" else "H-Mean", *(f"{m['metric'][k]:.4f}" for m in models))
    console = Console()
    console.print(table)
    if s["most_disagreeing"]:
        console.print(
            "most disagreeing: "
            + ", ".join(f"{d['image']} ({d['disagreement']:.3f})" for d in s["most_disagreeing"][:5])
        )
    console.print(f"report: {report.report_path}")


def _common_args(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--gt", metavar="GT.json", help="ground-truth annotation JSON: adds per-image H-Mean and errors")
    p.add_argument("--images", metavar="DIR", help="the images: sizes for huge boxes, backgrounds for overlays")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default: {out_default})")
    p.add_argument("--no-plots", action="store_true", help="write report.md and summary.json only (fast)")


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep analyze PRED.json|submission.csv [--gt GT.json] [--images DIR] [--out DIR]`."""
    p = argparse.ArgumentParser(
        prog="hrnet_sweep analyze",
        description="Statistics, flags, per-image H-Mean and "
        "overlays of the worst images for a prediction JSON or a submission CSV.",
    )
    p.add_argument("pred", metavar="PRED", help="prediction JSON or submission CSV")
    _common_args(p, "<PRED without extension>_analysis, next to PRED")
    p.add_argument(
        "--worst", type=flag(int, ge=0), default=8, metavar="N", help="overlays of the N worst images (default 8)"
    )
    args = p.parse_args(argv)
    pred = Path(args.pred)
    out = Path(args.out) if args.out else pred.with_name(f"{pred.stem}_analysis")
    report = analyze(
        pred, gt_path=args.gt, images_dir=args.images, out_dir=out, worst=args.worst, plots=not args.no_plots
    )
    _print_analysis(report)
    return 0


def main_compare(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep compare A B [...] [--gt GT.json] [--images DIR] [--out DIR] [--names a,b]`."""
    p = argparse.ArgumentParser(
        prog="hrnet_sweep compare",
        description="Compare two or more prediction JSONs or "
        "submission CSVs image by image; the first is the reference.",
    )
    p.add_argument("preds", nargs="+", metavar="PRED", help="prediction JSONs or submission CSVs (two or more)")
    _common_args(p, "compare_<A>_vs_<B>, next to the first PRED")
    p.add_argument("--names", metavar="A,B,...", help="model names, comma-separated (default: the file names)")
    p.add_argument(
        "--top", type=flag(int, ge=0), default=8, metavar="N", help="overlays of the N most disagreeing images"
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if len(args.preds) < 2:
        raise UserError(f"compare needs two or more prediction files, got {len(args.preds)}")
    first = Path(args.preds[0])
    out = (
        Path(args.out)
        if args.out
        else first.with_name("compare_" + "_vs_".join(_safe(Path(x).name) for x in args.preds[:3]))
    )
    report = compare(
        args.preds,
        gt_path=args.gt,
        images_dir=args.images,
        names=names,
        out_dir=out,
        top=args.top,
        plots=not args.no_plots,
    )
    _print_compare(report)
    return 0
