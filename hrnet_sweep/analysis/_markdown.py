"""`report.md` of `analyze` and of `compare`, rendered from their summary dicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ._model import _ERRORS
from ._rules import count_limits


def _md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _name(path: Path | None) -> str | None:
    return None if path is None else path.name


def _img(alt: str, path: Path | None) -> list[str]:
    return [f"![{alt}]({path.name})", ""] if path is not None else []


def _link(name: str | None) -> str:
    return f"[{name}]({name})" if name else "-"


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _top(entry: dict) -> str:
    return ", ".join(f"`{n}` ({k})" for n, k in entry["top"][:3]) or "-"


def _metric_line(m: Mapping) -> str:
    return f"**{_f(m.get('hmean'))}** (precision {_f(m.get('precision'))}, recall {_f(m.get('recall'))})"


def _names(names: Sequence[str], counts: Mapping[str, dict], limit: int = 12) -> str:
    shown = ", ".join(f"`{n}` ({counts[n]['boxes']})" for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) if names else "none"


def _analysis_markdown(s: dict, files: Mapping[str, Path]) -> str:
    img, out, rules = s["images"], s["count_outliers"], s["rules"]["definitions"]
    body = _analysis_overview(s)

    few, many = count_limits(out["few_below"], out["many_above"])
    body += [
        "## Boxes per image",
        "",
        *_img("boxes per image", files.get("boxes_per_image")),
        f"- Too few ({rules['few']}, i.e. {few} boxes): {_names(out['few'], s['per_image'])}",
        f"- Too many ({rules['many']}, i.e. {many} boxes): {_names(out['many'], s['per_image'])}",
        "",
    ]

    flag_rows = [
        [f.replace("_", " "), s["flags"][f]["boxes"], s["flags"][f]["images"], _top(s["flags"][f]), rules[f]]
        for f in ("tiny", "huge", "extreme_aspect", "under_4_points", "over_cap")
    ]
    body += ["## Box flags", "", _md_table(["flag", "boxes", "images", "most in", "rule"], flag_rows), ""]
    unsized = img["total"] - s["flags"]["huge"]["images_checked"]
    if unsized:
        body += [
            f"The image size of {unsized} of {img['total']} images is unknown, so they are not checked for huge "
            "boxes: pass `--images` or `--gt`.",
            "",
        ]
    body += _img("box geometry", files.get("box_geometry"))

    if s["errors"]:
        err_rows = [
            [e.replace("_", " "), s["errors"][e]["total"], s["errors"][e]["images"], _top(s["errors"][e]), rules[e]]
            for e in _ERRORS
        ]
        body += [
            "## Errors against the ground truth",
            "",
            _md_table(["error", "count", "images", "most in", "rule"], err_rows),
            "",
            *_img("per-image H-Mean", files.get("hmean_per_image")),
        ]

    body += _worst_section(s)
    body += ["All numbers, per image: [summary.json](summary.json).", ""]
    return "\n".join(body)


def _analysis_overview(s: dict) -> list[str]:
    """The title, the inputs and the table of the headline numbers."""
    img, box, out = s["images"], s["boxes"], s["count_outliers"]
    inputs = s["inputs"]
    head = [
        f"# Analysis of `{Path(inputs['predictions']).name}`",
        "",
        " · ".join(f"{k.replace('_', ' ')}: `{v}`" for k, v in inputs.items() if v),
        "",
    ]
    images = str(img["total"])
    if inputs["ground_truth"]:
        images += (
            f" ({len(img['missing_from_predictions'])} of the ground truth missing from the predictions: "
            f"scored 0; {len(img['not_in_ground_truth'])} predicted images not in the ground truth: not scored)"
        )
    rows = [
        ["images", images],
        [
            "boxes",
            f"{box['total']:,} in all; per image mean {box['mean']:.1f}, median {box['median']:g}, "
            f"min {box['min']}, max {box['max']}",
        ],
    ]
    if s["metric"]:
        rows.append(["H-Mean, macro over images", _metric_line(s["metric"])])
        if s["metric"].get("micro"):
            rows.append(["H-Mean, micro over all boxes", _metric_line(s["metric"]["micro"])])
    rows.append(["images with too few / too many boxes", f"{len(out['few'])} / {len(out['many'])}"])
    flagged = ", ".join(f"{s['flags'][f]['boxes']} {f.replace('_', ' ')}" for f in ("tiny", "huge", "extreme_aspect"))
    rows.append(["flagged boxes", flagged])
    body = head + [_md_table(["", ""], rows), ""]
    if s["unreadable"]:
        body += [
            f"{s['unreadable']} polygons of the file were unreadable (NaN; in JSON also under 3 points or zero "
            "area) and are not counted.",
            "",
        ]
    return body


def _worst_section(s: dict) -> list[str]:
    """The table of the worst images (with GT) or the most flagged ones; none when empty."""
    if not s["worst"]:
        return []
    if s["worst_by"] == "hmean":
        body = [
            "## Worst images (lowest H-Mean)",
            "",
            "Green: ground truth (filled: missed); red: predictions (filled: false positive).",
            "",
        ]
        cols = ["#", "image", "H-Mean", "P", "R", "GT", "det", "missed", "split", "merged", "false pos.", "overlay"]
        rows = [
            [
                w["rank"],
                f"`{w['image']}`",
                _f(w["hmean"], 3),
                _f(w["precision"], 3),
                _f(w["recall"], 3),
                w.get("num_gt", "-"),
                w["boxes"],
                w["missed"],
                w["split"],
                w["merged"],
                w["false_positive"],
                _link(w["overlay"]),
            ]
            for w in s["worst"]
        ]
    else:
        body = [
            "## Most flagged images",
            "",
            "Without ground truth: images with too few / too many boxes first, then by flagged boxes (thick outlines).",
            "",
        ]
        cols = ["#", "image", "boxes", "tiny", "huge", "extreme aspect", "under 4 points", "overlay"]
        rows = [
            [
                w["rank"],
                f"`{w['image']}`",
                w["boxes"],
                w["tiny"],
                "-" if w["huge"] is None else w["huge"],
                w["extreme_aspect"],
                w["under_4_points"],
                _link(w["overlay"]),
            ]
            for w in s["worst"]
        ]
    return body + [_md_table(cols, rows), ""]


def _compare_markdown(s: dict, files: Mapping[str, Path]) -> str:
    names = s["inputs"]["names"]
    body = [
        f"# Comparison: {' vs '.join(f'`{n}`' for n in names)}",
        "",
        f"{s['images']} images; reference (differences are against it): `{s['reference']}`."
        + (f" Ground truth: `{s['inputs']['ground_truth']}`." if s["inputs"]["ground_truth"] else ""),
        "",
    ]
    has_gt = s["inputs"]["ground_truth"] is not None
    cols = [
        "model",
        "file",
        "boxes",
        "per image (median)",
        "too few / many",
        "tiny",
        "huge",
        "extreme aspect",
        "under 4 points",
    ] + (["precision", "recall", "H-Mean", "H-Mean micro"] if has_gt else [])
    rows = []
    for n in names:
        m = s["models"][n]
        row = [
            f"`{n}`",
            f"`{Path(m['file']).name}`",
            f"{m['boxes']['total']:,}",
            f"{m['boxes']['median']:g}",
            f"{len(m['count_outliers']['few'])} / {len(m['count_outliers']['many'])}",
            m["flags"]["tiny"]["boxes"],
            m["flags"]["huge"]["boxes"],
            m["flags"]["extreme_aspect"]["boxes"],
            m["flags"]["under_4_points"]["boxes"],
        ]
        if has_gt:
            met = m["metric"]
            row += [
                _f(met["precision"]),
                _f(met["recall"]),
                f"**{_f(met['hmean'])}**",
                _f((met.get("micro") or {}).get("hmean")),
            ]
        rows.append(row)
    body += ["## Models", "", _md_table(cols, rows), ""]
    body += ["## Per-image differences", ""]
    for n, d in s["differences"].items():
        line = (
            f"- `{n}` vs `{s['reference']}`: more boxes on {d['more_boxes']} images, fewer on {d['fewer_boxes']}, "
            f"the same on {d['same_boxes']} (mean difference {d['mean_box_diff']:+.1f}, "
            f"mean absolute {d['mean_abs_box_diff']:.1f})"
        )
        if has_gt:
            line += (
                f"; H-Mean better on {d['better']} images, worse on {d['worse']}, equal on {d['same']} "
                f"(mean difference {d['mean_hmean_diff']:+.4f})"
            )
        body.append(line + ".")
    body += [
        "",
        *_img("boxes per image", files.get("compare_boxes")),
        *_img("per image", files.get("compare_per_image")),
    ]
    if s["most_disagreeing"]:
        how = (
            "H-Mean spread between the models (max - min)"
            if s["disagreement_by"] == "hmean_spread"
            else "1 - agreement, the CLEval H-Mean of one model's boxes scored against the other's"
        )
        body += ["## Where the models disagree most", "", f"Ranked by {how}.", ""]
        cols = ["#", "image", "disagreement", "boxes"] + (["H-Mean"] if has_gt else []) + ["overlay"]
        rows = []
        for d in s["most_disagreeing"]:
            row = [
                d["rank"],
                f"`{d['image']}`",
                f"{d['disagreement']:.3f}",
                " / ".join(str(d["boxes"][n]) for n in names),
            ]
            if has_gt:
                row.append(" / ".join(_f(d["hmean"][n], 3) for n in names))
            rows.append(row + [_link(d["overlay"])])
        body += [
            f"Boxes{' and H-Mean' if has_gt else ''} are listed in model order: "
            + " / ".join(f"`{n}`" for n in names)
            + ".",
            "",
            _md_table(cols, rows),
            "",
        ]
    body += ["All numbers, per image: [summary.json](summary.json).", ""]
    return "\n".join(body)
