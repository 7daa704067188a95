"""The PNGs of `hrnet_sweep analyze` / `compare` and of the training benchmarks
(matplotlib, Agg, written atomically).

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, never through
`pyplot`: no global backend switch, no figure registry to leak, safe in a worker.
One colour code everywhere: ground truth green, predictions red.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..files import atomic_path
from ._rules import count_limits

__all__ = [
    "Curve",
    "Panel",
    "box_geometry",
    "boxes_per_image",
    "compare_boxes",
    "compare_per_image",
    "hmean_per_image",
    "overlay",
    "recorded_curves",
    "regret_curves",
    "training_curves",
]

GT = "#1a9641"
DET = "#d7191c"
FLAG_COLORS = {"tiny": "#ff7f00", "huge": "#6a3d9a", "extreme_aspect": "#1f78b4"}
FLAG_LABELS = {"tiny": "tiny", "huge": "huge", "extreme_aspect": "extreme aspect"}
MODEL_COLORS = ("#d7191c", "#2c7bb6", "#fdae61", "#7b3294", "#008837", "#636363")
DPI = 110


def _figure(width: float, height: float) -> Figure:
    # Constrained layout: titles, legends outside the axes and suptitles never overlap,
    # and savefig draws once (bbox_inches="tight" would draw twice).
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return Path(path)


# ----------------------------------------------------------------------------- distributions


def boxes_per_image(
    path,
    counts: Sequence[int],
    edges: Sequence[float],
    *,
    median: float,
    few_below: float,
    many_above: float,
    gt_counts: Sequence[int] | None = None,
) -> Path:
    """Histogram of boxes per image, the median and the too-few / too-many zones shaded."""
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot()
    ax.hist(counts, bins=edges, color=DET, alpha=0.75, label=f"predictions ({len(counts)} images)")
    if gt_counts is not None:
        ax.hist(gt_counts, bins=edges, histtype="step", color=GT, linewidth=2, label="ground truth")
    # The zones are drawn where they fall inside the data; the title states both limits.
    zone = "flagged: too few / too many"
    if few_below > edges[0]:
        ax.axvspan(edges[0], few_below, color="0.3", alpha=0.15, lw=0, label=zone)
    if many_above < edges[-1]:
        ax.axvspan(many_above, edges[-1], color="0.3", alpha=0.15, lw=0, label=None if few_below > edges[0] else zone)
    ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median of predictions {median:g}")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("boxes per image")
    ax.set_ylabel("images")
    few, many = count_limits(few_below, many_above)
    ax.set_title(f"Boxes per image (flagged: {few}, {many})", fontsize=10)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def box_geometry(
    path,
    width: Sequence[float],
    height: Sequence[float],
    flags: Mapping[str, np.ndarray],
    *,
    tiny_px: float,
    aspect_min: float,
    aspect_max: float,
    gt_width: Sequence[float] | None = None,
    gt_height: Sequence[float] | None = None,
) -> Path:
    """Min-area-rectangle width vs height (log-log) with flagged boxes, and the aspect histogram."""
    w = np.clip(np.asarray(width, float), 0.5, None)
    h = np.clip(np.asarray(height, float), 0.5, None)
    fig = _figure(12.0, 4.8)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    if gt_width is not None:
        ax.scatter(
            np.clip(gt_width, 0.5, None),
            np.clip(gt_height, 0.5, None),
            s=5,
            color=GT,
            alpha=0.25,
            lw=0,
            label="ground truth",
        )
    ax.scatter(w, h, s=5, color=DET, alpha=0.35, lw=0, label=f"predictions ({len(w)})")
    for flag, mask in flags.items():
        mask = np.asarray(mask, bool)
        if mask.any():
            ax.scatter(
                w[mask],
                h[mask],
                s=22,
                facecolors="none",
                edgecolors=FLAG_COLORS[flag],
                linewidths=1.2,
                label=f"{FLAG_LABELS[flag]} ({int(mask.sum())})",
            )
    lo = max(0.4, min(float(w.min(initial=tiny_px)), float(h.min(initial=tiny_px)), tiny_px) / 2)
    hi = max(float(w.max(initial=1)), float(h.max(initial=1)), 10 * tiny_px) * 1.6
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.fill_between(
        [lo, tiny_px],
        lo,
        tiny_px,
        color=FLAG_COLORS["tiny"],
        alpha=0.12,
        lw=0,
        label=f"tiny zone (both sides <= {tiny_px:g} px)",
    )
    xs = np.array([lo, hi])
    for ratio in (aspect_max, aspect_min):  # lines of constant width / height
        ax.plot(xs, xs / ratio, color=FLAG_COLORS["extreme_aspect"], linestyle=":", linewidth=1)
    ax.text(hi / 1.3, hi / 1.3 / aspect_max, f"w/h = {aspect_max:g} ", fontsize=8, ha="right", va="bottom", color="0.3")
    # low on its line, clear of the legend in the upper left
    ax.text(hi / 12 * aspect_min * 1.15, hi / 12, f"w/h = {aspect_min:g}", fontsize=8, ha="left", va="top", color="0.3")
    ax.set_xlabel("width (px, side nearer horizontal)")
    ax.set_ylabel("height (px)")
    ax.set_title("Box size (minimum-area rectangle)")
    ax.legend(fontsize=8, loc="upper left", markerscale=1.5)

    aspect = w / h
    all_ar = (
        np.concatenate([aspect, np.clip(gt_width, 0.5, None) / np.clip(gt_height, 0.5, None)])
        if gt_width is not None
        else aspect
    )
    a_lo = min(float(all_ar.min(initial=1)), aspect_min) / 1.5
    a_hi = max(float(all_ar.max(initial=1)), aspect_max) * 1.5
    bins = np.geomspace(a_lo, a_hi, 50)
    ax2.hist(aspect, bins=bins, color=DET, alpha=0.75, label="predictions")
    if gt_width is not None:
        ax2.hist(all_ar[len(aspect) :], bins=bins, histtype="step", color=GT, linewidth=2, label="ground truth")
    for x in (aspect_min, aspect_max):
        ax2.axvline(x, color=FLAG_COLORS["extreme_aspect"], linestyle="--", linewidth=1)
    ax2.axvspan(a_lo, aspect_min, color=FLAG_COLORS["extreme_aspect"], alpha=0.08, lw=0)
    ax2.axvspan(aspect_max, a_hi, color=FLAG_COLORS["extreme_aspect"], alpha=0.08, lw=0, label="extreme aspect")
    ax2.set_xscale("log")
    ax2.set_xlim(a_lo, a_hi)
    ax2.set_xlabel("aspect ratio width / height (log)")
    ax2.set_ylabel("boxes")
    ax2.set_title("Aspect ratio")
    ax2.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def hmean_per_image(
    path,
    precision: Sequence[float],
    recall: Sequence[float],
    hmean: Sequence[float],
    *,
    macro: float,
    labels: Mapping[int, str] | None = None,
) -> Path:
    """Histogram of per-image H-Mean, and precision vs recall per image (`labels`: index -> name)."""
    fig = _figure(12.0, 4.6)
    ax, ax2 = fig.subplots(1, 2)
    # Good models crowd into [0.95, 1]: zoom onto the data, in steps of 0.05.
    lo = min(0.95, math.floor(min(hmean, default=0.0) * 20) / 20)
    ax.hist(hmean, bins=np.linspace(lo, 1, 26), color="#2c7bb6", alpha=0.8)
    ax.axvline(macro, color="black", linestyle="--", linewidth=1, label=f"mean (macro) {macro:.4f}")
    ax.set_xlim(lo, 1)
    ax.set_xlabel("H-Mean per image")
    ax.set_ylabel("images")
    ax.set_title(f"Per-image H-Mean ({len(hmean)} images)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="upper left")
    ax2.scatter(recall, precision, s=18, color="#2c7bb6", alpha=0.7, lw=0)
    for i, name in (labels or {}).items():
        ax2.annotate(name, (recall[i], precision[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo = max(0.0, min(min(precision, default=1), min(recall, default=1)) - 0.05)
    ax2.set_xlim(lo, 1.01)
    ax2.set_ylim(lo, 1.01)
    ax2.plot([lo, 1], [lo, 1], color="0.7", linewidth=0.8)
    ax2.set_xlabel("recall")
    ax2.set_ylabel("precision")
    ax2.set_title("Precision vs recall per image (worst labelled)")
    return _save(fig, path)


# ----------------------------------------------------------------------------- overlays


@dataclass
class Panel:
    """One view of an image: ground truth and detections, some of them highlighted."""

    title: str
    gt: Sequence[np.ndarray] = ()
    det: Sequence[np.ndarray] = ()
    gt_fill: Sequence[int] = ()
    """GT to fill (missed)."""
    det_fill: Sequence[int] = ()
    """Detections to fill (false positives)."""
    gt_split: Sequence[int] = ()
    """GT covered by 2+ detections: thick dashed green."""
    det_merged: Sequence[int] = ()
    """Detections covering 2+ GT: thick dashed red."""
    det_flagged: Mapping[str, Sequence[int]] = field(default_factory=dict)
    """Detections flagged tiny / huge / extreme_aspect, drawn thicker in their colour."""


def _polys(ax, polys, idx=None, **kw) -> None:
    verts = [np.asarray(p, float) for k, p in enumerate(polys) if (idx is None or k in idx) and len(p) >= 2]
    if verts:
        ax.add_collection(PolyCollection(verts, closed=True, **kw))


def _view(panels: Sequence[Panel], w: int, h: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) to show: the whole image, or the text's region when that is much smaller.

    Photographed receipts often fill a third of the frame; zooming onto the boxes (all of
    them, so a stray false positive stays in view) keeps the words legible.
    """
    pts = [np.asarray(p, float).reshape(-1, 2) for pn in panels for p in (*pn.gt, *pn.det) if len(p)]
    if not pts:
        return 0.0, 0.0, float(w), float(h)
    allp = np.concatenate(pts)
    margin = max(20.0, 0.04 * max(w, h))
    x0, y0 = np.maximum(allp.min(axis=0) - margin, 0)
    x1, y1 = np.minimum(allp.max(axis=0) + margin, (w, h))
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) > 0.6 * w * h:
        return 0.0, 0.0, float(w), float(h)
    return float(x0), float(y0), float(x1), float(y1)


def overlay(
    path, panels: Sequence[Panel], *, size: tuple[int, int], image: np.ndarray | None = None, title: str = ""
) -> Path:
    """Draw each panel over the image (grey, lightened) or a blank canvas of `size` (w, h).

    When the boxes cover a small part of the image the view zooms onto them (the panel
    title says so).
    """
    x0, y0, x1, y1 = _view(panels, *size)
    zoomed = (x1 - x0, y1 - y0) != tuple(map(float, size))
    w, h = x1 - x0, y1 - y0
    panel_h = 9.0 if h >= w else 9.0 * h / w
    panel_w = panel_h * w / h
    fig = _figure(max(panel_w * len(panels), 5.0), panel_h + 1.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, panel in zip(axes, panels):
        if image is not None:
            gray = image.mean(axis=2) if image.ndim == 3 else image
            ax.imshow(gray, cmap="gray", vmin=-120, vmax=255, interpolation="antialiased")  # lightened
        else:
            ax.set_facecolor("white")
        gt_fill, det_fill = set(panel.gt_fill), set(panel.det_fill)
        _polys(ax, panel.gt, gt_fill, facecolors=GT, alpha=0.35, edgecolors="none")
        _polys(ax, panel.det, det_fill, facecolors=DET, alpha=0.30, edgecolors="none")
        _polys(ax, panel.gt, facecolors="none", edgecolors=GT, linewidths=1.4)
        _polys(ax, panel.det, facecolors="none", edgecolors=DET, linewidths=0.9)
        _polys(ax, panel.gt, set(panel.gt_split), facecolors="none", edgecolors=GT, linewidths=2.4, linestyles="--")
        _polys(ax, panel.det, set(panel.det_merged), facecolors="none", edgecolors=DET, linewidths=2.4, linestyles="--")
        for flag, idx in panel.det_flagged.items():
            _polys(ax, panel.det, set(idx), facecolors="none", edgecolors=FLAG_COLORS[flag], linewidths=2.2)
            if len(idx):
                handles[flag] = Line2D([], [], color=FLAG_COLORS[flag], lw=2.2, label=FLAG_LABELS[flag])
        if len(panel.gt):
            handles["gt"] = Line2D([], [], color=GT, lw=1.4, label="ground truth")
        if len(panel.det):
            handles["det"] = Line2D([], [], color=DET, lw=0.9, label="prediction")
        if gt_fill:
            handles["missed"] = Patch(color=GT, alpha=0.35, label="missed GT")
        if det_fill:
            handles["fp"] = Patch(color=DET, alpha=0.30, label="false positive")
        if len(panel.gt_split):
            handles["split"] = Line2D([], [], color=GT, lw=2.4, ls="--", label="split GT")
        if len(panel.det_merged):
            handles["merged"] = Line2D([], [], color=DET, lw=2.4, ls="--", label="merging detection")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        zoom_note = f"\n(zoomed to x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} of {size[0]}x{size[1]})" if zoomed else ""
        ax.set_title(panel.title + zoom_note, fontsize=9)
    order = [
        k for k in ("gt", "det", "missed", "fp", "split", "merged", "tiny", "huge", "extreme_aspect") if k in handles
    ]
    if order:
        fig.legend(
            handles=[handles[k] for k in order],
            loc="outside lower center",
            ncol=min(len(order), 4),
            fontsize=8,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------- compare


def compare_boxes(
    path, counts: Mapping[str, Sequence[int]], edges: Sequence[float], *, gt_counts: Sequence[int] | None = None
) -> Path:
    """Boxes per image of every model as step histograms on the same bins."""
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot()
    for (name, c), color in zip(counts.items(), MODEL_COLORS):
        ax.hist(c, bins=edges, histtype="step", linewidth=1.8, color=color, label=f"{name} (median {np.median(c):g})")
    if gt_counts is not None:
        ax.hist(gt_counts, bins=edges, color=GT, alpha=0.2, label=f"ground truth (median {np.median(gt_counts):g})")
    ax.set_xlabel("boxes per image")
    ax.set_ylabel("images")
    ax.set_title("Boxes per image")
    ax.legend(fontsize=8)
    return _save(fig, path)


def compare_per_image(
    path,
    ref: str,
    counts: Mapping[str, Sequence[int]],
    hmeans: Mapping[str, Sequence[float]] | None = None,
    labels: Mapping[int, str] | None = None,
) -> Path:
    """Per image, every other model against the reference: boxes, and H-Mean with GT."""
    panels = 2 if hmeans else 1
    fig = _figure(5.6 * panels, 5.0)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    series = [("boxes per image", counts)] + ([("H-Mean per image", hmeans)] if hmeans else [])
    for ax, (what, values) in zip(axes, series):
        x = np.asarray(values[ref], float)
        top = max((float(np.max(v, initial=0)) for v in values.values()), default=1)
        lowest = min(float(np.min(v, initial=1)) for v in values.values())
        lo = 0.0 if what.startswith("boxes") else max(0.0, lowest - 0.05)
        hi = top * 1.05 + (1 if what.startswith("boxes") else 0.01)
        for k, ((name, v), color) in enumerate(zip(((n, v) for n, v in values.items() if n != ref), MODEL_COLORS[1:])):
            ax.scatter(x, v, s=18, alpha=0.7, lw=0, color=color, label=name)
            for i, label in (labels or {}).items() if k == 0 else ():  # once, on the first other model
                ax.annotate(label, (x[i], v[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{ref}: {what}")
        others = [n for n in values if n != ref]
        ax.set_ylabel(f"{others[0] if len(others) == 1 else 'other models'}: {what}")
        ax.set_title(f"{what[0].upper() + what[1:]} (above the diagonal: more than {ref})", fontsize=9)
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


# ----------------------------------------------------------------------------- training


@dataclass
class Curve:
    """One run's validation H-Mean by training minutes: `tuned` at each validation's best
    post-processing, `fixed` at the preset's (None where not logged)."""

    label: str
    minutes: Sequence[float]
    tuned: Sequence[float | None]
    fixed: Sequence[float | None] = ()


def training_curves(
    path, panels: Sequence[tuple[str, Sequence[Curve]]], *, target: float | None = None, title: str = ""
) -> Path:
    """Validation H-Mean against training minutes, one panel per (title, runs) side by side,
    one colour per run: tuned solid with markers, fixed post-processing dashed; `target` as
    a dotted line."""
    fig = _figure(5.0 * len(panels) + 1.0, 4.5)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (panel_title, curves) in zip(axes, panels):
        for i, curve in enumerate(curves):
            color = MODEL_COLORS[i % len(MODEL_COLORS)]
            for values, kind, style in (
                (curve.tuned, "tuned", {"marker": "o", "markersize": 3}),
                (curve.fixed, "fixed post-processing", {"linestyle": "--", "alpha": 0.5}),
            ):
                pts = [(m, v) for m, v in zip(curve.minutes, values) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), color=color, label=f"{curve.label}, {kind}", **style)
        if target is not None:
            ax.axhline(target, color="0.4", linewidth=0.8, linestyle=":", label=f"target {target:g}")
        ax.set_xlabel("training minutes (validation included)")
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(panel_title, fontsize=10)
    axes[0].set_ylabel("validation H-Mean")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------- sweeps


def regret_curves(
    path,
    panels: Sequence[tuple[str, Mapping[str, Sequence[Sequence[tuple[float, float | None]]]]]],
    *,
    target: float,
    within: float | None = None,
    title: str = "",
) -> Path:
    """Regret (target - best finished val/hmean so far) against training hours, the
    median over repetitions, one line per method and one panel per setting (two panels a
    row). A method named "SAMPLER + VARIANT" gets its sampler's colour and its variant's
    line style.

    Each method's repetitions are step functions given as (hours, best so far) points;
    before a repetition's first finished run its regret is `target` (nothing found).
    The y axis is logarithmic, floored at 1e-4; `within` is drawn as a dotted line.
    """
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(5.5 * cols + 2.5, 4.2 * rows)
    grid_axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    axes = list(grid_axes.flat)[: len(panels)]
    for extra in list(grid_axes.flat)[len(panels) :]:
        extra.set_visible(False)
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
    names = list(dict.fromkeys(n for _, by_method in panels for n in by_method))
    kinds = list(dict.fromkeys(n.split(" + ")[0] for n in names))
    variants = list(dict.fromkeys(n.split(" + ", 1)[-1] for n in names))
    for ax, (panel_title, by_method) in zip(axes, panels):
        end = max((pts[-1][0] for reps in by_method.values() for pts in reps if pts), default=1.0)
        grid = np.linspace(0.0, end, 400)
        for name, reps in by_method.items():
            regret = np.array([_steps(pts, grid, target) for pts in reps])
            ax.plot(
                grid,
                np.maximum(np.median(regret, axis=0), 1e-4),
                color=MODEL_COLORS[kinds.index(name.split(" + ")[0]) % len(MODEL_COLORS)],
                linestyle=styles[variants.index(name.split(" + ", 1)[-1]) % len(styles)],
                linewidth=1.3,
                label=name,
            )
        if within is not None:
            ax.axhline(within, color="0.4", linewidth=0.8, linestyle=":", label=f"within {within:g}")
        ax.set_yscale("log")
        ax.set_xlabel("training hours, all agents (CPU proxy)")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(panel_title, fontsize=10)
    for row in grid_axes:
        row[0].set_ylabel("median regret (best config - best found)")
    axes[cols - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _steps(points: Sequence[tuple[float, float | None]], grid: np.ndarray, target: float) -> np.ndarray:
    """target - best so far at each grid time, from (time, best) points (a step function)."""
    out = np.full(grid.shape, float(target))
    for t, best in points:
        if best is not None:
            out[grid >= t] = target - best
    return out


def recorded_curves(path, runs: Sequence[tuple[float, Sequence[float]]], *, label: str, title: str = "") -> Path:
    """Every recorded learning curve (val/hmean per epoch), coloured by a parameter
    (`runs`: (parameter value, curve)), on a log colour scale."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    fig = _figure(7.0, 4.6)
    ax = fig.subplots()
    values = [v for v, _ in runs]
    norm = LogNorm(min(values), max(values))
    cmap = colormaps["viridis"]
    for v, curve in runs:
        ax.plot(range(1, len(curve) + 1), curve, color=cmap(norm(v)), linewidth=0.9, alpha=0.8)
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/hmean (tuned)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
