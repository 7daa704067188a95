"""`hrnet_sweep validate-submission CSV [--images DIR]`: check a submission CSV against the
competition's rules before uploading it.

Errors (exit 2): a path that is not a readable regular file (a directory, a FIFO); a
header other than `filename,polygons`; a row without exactly two fields; an empty or
repeated file name; a coordinate that is not an integer in ASCII digits (Python's int()
also reads '٣', the competition's parser would not); anything but single spaces between
coordinates; an empty polygon between `|`s; an odd number of coordinates; with
`--images`, a test image without a row or a row for a file that is not a test image.
Warnings (exit 0): polygons with fewer than 4 points (the scorer ignores them), more
than 500 polygons in one image (the scorer ignores the rest), the same polygon twice in
one image, points outside the image. An empty `polygons` field is a valid "no
detections". Rows of any length are read (up to `formats.CSV_FIELD_LIMIT`
characters a field, far past the csv module's default of 131,072).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .constants import MAX_DETECTIONS
from .errors import DataError
from .files import check_readable_file, image_size
from .formats import CSV_HEADER, csv_field_limit
from .numeric import flag

__all__ = ["Issue", "Report", "main", "validate_submission"]

_INT = re.compile(r"-?\d+", re.ASCII)
MIN_POINTS = 4


@dataclass(frozen=True)
class Issue:
    """One problem: where (physical line of the file, data row number, image) and what."""

    line: int
    row: int | None
    filename: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (
            f" (row {self.row}" + (f", {self.filename}" if self.filename else "") + ")" if self.row is not None else ""
        )
        return f"{where}: {self.message}"


@dataclass
class Report:
    path: str
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    rows: int = 0
    polygons: int = 0
    empty_rows: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors


def _check_polygons(text: str, line: int, row: int, name: str, report: Report, size: tuple[int, int] | None) -> None:
    if text == "":
        report.empty_rows += 1
        return
    seen: dict[tuple[int, ...], int] = {}
    chunks = text.split("|")
    count = 0
    for j, chunk in enumerate(chunks, 1):

        def err(msg: str, j: int = j) -> None:
            report.errors.append(Issue(line, row, name, f"polygon {j}: {msg}"))

        if chunk == "":
            err("empty (two '|' in a row, or a leading / trailing '|')")
            continue
        tokens = chunk.split(" ")
        if "" in tokens:
            err("coordinates must be separated by single spaces (found a double, leading or trailing space)")
            continue
        bad = [t for t in tokens if not _INT.fullmatch(t)]
        if bad:
            err(f"coordinates must be integers, found {bad[0]!r}")
            continue
        if len(tokens) % 2:
            err(f"odd number of coordinates ({len(tokens)}): x y pairs expected")
            continue
        count += 1
        values = tuple(int(t) for t in tokens)
        points = len(values) // 2
        if points < MIN_POINTS:
            report.warnings.append(
                Issue(
                    line,
                    row,
                    name,
                    f"polygon {j}: {points} points; the scorer ignores polygons with fewer than {MIN_POINTS}",
                )
            )
        if values in seen:
            report.warnings.append(Issue(line, row, name, f"polygon {j} repeats polygon {seen[values]}"))
        else:
            seen[values] = j
        if size is not None:
            w, h = size
            xs, ys = values[0::2], values[1::2]
            if min(xs) < 0 or min(ys) < 0 or max(xs) > w or max(ys) > h:
                report.warnings.append(Issue(line, row, name, f"polygon {j} has points outside the {w}x{h} image"))
    report.polygons += count
    if len(chunks) > MAX_DETECTIONS:
        report.warnings.append(
            Issue(line, row, name, f"{len(chunks)} polygons; the scorer only reads the first {MAX_DETECTIONS}")
        )


def _image_sizes(images: Path, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(width, height) after EXIF orientation, read from the headers only; an unreadable
    image (or a FIFO) is left out: its size stays unknown."""
    sizes = {}
    for name in names:
        if (size := image_size(images / name)) is not None:
            sizes[name] = size
    return sizes


def _test_images(images: Path) -> tuple[set[str], dict[str, tuple[int, int]]]:
    """The image names of the `--images` folder and their sizes."""
    from .dbnet.data import IMAGE_EXTENSIONS

    if not images.is_dir():
        raise DataError(f"--images {images}: not a folder")
    expected = {p.name for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    if not expected:
        raise DataError(f"--images {images}: no {'/'.join(IMAGE_EXTENSIONS)} images")
    return expected, _image_sizes(images, sorted(expected))


def _check_rows(
    reader, report: Report, expected: set[str] | None, images: Path | None, sizes: dict[str, tuple[int, int]]
) -> dict[str, int]:
    """Check the data rows after the header; returns the first line of each file name."""
    first_line: dict[str, int] = {}
    row = 0
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            report.errors.append(Issue(start, row + 1, None, f"not CSV: {err}"))
            break
        if not fields or fields == [""]:
            report.warnings.append(Issue(start, None, None, "blank line (ignored here; some readers may not)"))
            continue
        row += 1
        if len(fields) != 2:
            report.errors.append(
                Issue(start, row, fields[0] or None, f"expected 2 fields (filename,polygons), found {len(fields)}")
            )
            continue
        name, polys = fields
        if not name.strip():
            report.errors.append(Issue(start, row, None, "empty filename"))
            continue
        if name != name.strip():
            report.errors.append(Issue(start, row, name, "filename has leading or trailing spaces"))
        if name in first_line:
            report.errors.append(Issue(start, row, name, f"duplicate row; first at line {first_line[name]}"))
        else:
            first_line[name] = start
        if expected is not None and name not in expected:
            report.errors.append(Issue(start, row, name, f"not an image of {images}"))
        _check_polygons(polys, start, row, name, report, sizes.get(name))
    report.rows = row
    return first_line


def validate_submission(path: str | Path, *, images: str | Path | None = None) -> Report:
    """Check a submission CSV; see the module docstring for the rules.

    Args:
        path: the CSV.
        images: the test image folder; then every image needs exactly one row and every
            row must name one of its images, and points are checked against image sizes.
    """
    path = check_readable_file(path)
    report = Report(str(path))
    images = None if images is None else Path(images)
    expected, sizes = (None, {}) if images is None else _test_images(images)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        report.errors.append(Issue(1, None, None, f"not UTF-8 text ({err.reason} at byte {err.start})"))
        return report
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if text.startswith("\ufeff"):
        report.errors.append(Issue(1, None, None, "starts with a byte-order mark (BOM); save as plain UTF-8"))
        text = text[1:]
    with io.StringIO(text, newline="") as fh, csv_field_limit():
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
        except csv.Error as err:
            report.errors.append(Issue(1, None, None, f"not CSV: {err}"))
            return report
        if header is None:
            report.errors.append(Issue(1, None, None, "empty file: expected the header 'filename,polygons'"))
            return report
        if tuple(header) != CSV_HEADER:
            report.errors.append(
                Issue(1, None, None, f"header must be exactly 'filename,polygons', found {','.join(header)!r}")
            )
        first_line = _check_rows(reader, report, expected, images, sizes)
    if expected is not None:
        for name in sorted(expected - set(first_line)):
            report.errors.append(Issue(reader.line_num, None, name, f"image {name} of {images} has no row"))
    return report


def _print(report: Report, limit: int, out=None) -> None:
    out = out or sys.stdout
    for kind, issues in (("error", report.errors), ("warning", report.warnings)):
        for issue in issues[:limit]:
            print(f"{report.path}: {kind}: {issue}", file=out)
        if len(issues) > limit:
            print(f"{report.path}: ... and {len(issues) - limit} more {kind}s", file=out)
    verdict = "VALID" if report.valid else "INVALID"
    print(
        f"{report.path}: {verdict}: {report.rows} rows, {report.polygons} polygons, {report.empty_rows} rows "
        f"without detections, {len(report.errors)} errors, {len(report.warnings)} warnings",
        file=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hrnet_sweep validate-submission",
        description=(
            "Check a submission CSV (header filename,polygons; integer coordinates joined by single spaces, "
            "polygons by '|'). Exit 0 when valid (warnings allowed), 2 when not."
        ),
    )
    ap.add_argument("csv", help="submission CSV")
    ap.add_argument("--images", help="test image folder: every image exactly once, no other rows")
    ap.add_argument("--max-messages", type=flag(int, ge=1), default=20, help="messages shown per kind (default 20)")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    report = validate_submission(args.csv, images=args.images)
    _print(report, args.max_messages)
    return 0 if report.valid else 2
