"""Files in and out: atomic writes, the competition annotation JSON, prediction JSON and
the submission CSV.

Everything that writes goes through `atomic_path`, so a crash or a full disk half way
never leaves a half-written preset, CSV, manifest or checkpoint behind.

Everything that reads first passes `check_readable_file`, and every failure after that
is a `DataError` naming the file: a directory or a FIFO (whose opening would block
forever), bad UTF-8, JSON nested too deeply, a CSV field past the csv module's limit.
Numbers are JSON numbers or, in the CSV, ASCII decimal numbers (Python's `float()` also
takes '٣' and '1_0', which the competition's parser would not read as numbers); a
boolean is not a number. Points stay float64 until `integer_points` rounds them, as the
competition rounds float64 (float32 would turn 1000.50002 into 1000.5, then 1000).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .constants import MAX_DETECTIONS
from .errors import DataError
from .files import atomic_write_json, atomic_write_text, read_json, read_text

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- annotations


MIN_AREA = 1e-6
"""Below this (square pixels) a polygon has zero area: its points lie on a line."""
_FAR = 1e7
"""Coordinates are bounded to +-_FAR pixels (points far outside the image are clamped to
it later); the bound keeps later float32 casts finite."""


def polygon_area(points) -> float:
    """Shoelace area of a (K, 2) polygon; 0 when its points are collinear."""
    pts = np.asarray(points, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@dataclass
class Word:
    """One annotated word: its key in the file and its polygon, (K, 2) float64 pixels."""

    key: str
    points: np.ndarray

    @property
    def has_area(self) -> bool:
        """False for a zero-area word: the metric scores it, training targets leave it out."""
        return polygon_area(self.points) >= MIN_AREA


@dataclass
class ImageAnnotation:
    """One image of an annotation file."""

    name: str
    words: list[Word] = field(default_factory=list)
    width: int | None = None
    height: int | None = None

    def polygons(self) -> list[np.ndarray]:
        return [w.points for w in self.words]


Annotations = dict  # str -> ImageAnnotation, in file order


def _is_number(value) -> bool:
    """A JSON number: an int or a float, never a bool (Python's True is an int, JSON's is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_points(raw) -> np.ndarray | str:
    """Return a (K, 2) float64 array, or a string saying why the points are unusable."""
    if not isinstance(raw, (list, tuple)):
        return f"points is {type(raw).__name__}, not a list"
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        return "points are not all [x, y] pairs"
    bad = [v for p in raw for v in p if not _is_number(v)]
    if bad:
        return f"points are not all numbers (found {bad[0]!r})"
    try:
        arr = np.array(raw, dtype=np.float64).reshape(-1, 2)
    except OverflowError:  # an integer past float64
        return "points contain NaN or infinity"
    if not np.isfinite(arr).all():
        return "points contain NaN or infinity"
    if len(arr) < 3:
        return f"{len(arr)} points, a polygon needs at least 3"
    return np.clip(arr, -_FAR, _FAR)


class _JsonObject(dict):
    """A JSON object that remembers the keys its text gave more than once (the json
    module silently keeps only the last of them)."""

    duplicates: tuple = ()


def _keep_duplicates(pairs: list) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        obj.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def _report(msg: str, strict: bool) -> None:
    if strict:
        raise DataError(msg)
    log.warning(msg)


def _parse_words(where: str, words_raw: dict, strict: bool) -> list[Word]:
    """The usable words of one image; `where` is "FILE: image 'NAME'"."""
    for key in getattr(words_raw, "duplicates", ()):
        _report(f"{where} word {key!r} is listed more than once; only its last entry is kept", strict)
    words: list[Word] = []
    for key, word in words_raw.items():
        points = _parse_points(word.get("points") if isinstance(word, dict) else None)
        if isinstance(points, str):
            _report(f"{where} word {key!r}: {points}; skipped", strict)
            continue
        words.append(Word(str(key), points))
        if not words[-1].has_area:
            log.warning(
                "%s word %r: zero area; kept: the metric scores it as the competition does, "
                "training leaves it out of the targets",
                where,
                key,
            )
    return words


def _image_size(value) -> int | None | str:
    """`img_w` / `img_h`: a positive whole number, None when absent, else a string why not."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, float) and math.isfinite(value) and value > 0 and value.is_integer():
        return int(value)
    return f"{value!r} is not a positive whole number"


def _escapes(name: str) -> bool:
    """An image name that is absolute or climbs out of the images folder with '..'."""
    norm = posixpath.normpath(name)
    return posixpath.isabs(norm) or norm == ".." or norm.startswith("../")


def _parse_image(path: Path, name: str, img, strict: bool) -> ImageAnnotation:
    where = f"{path}: image {name!r}"
    if not isinstance(img, dict):
        raise DataError(f"{where} is {type(img).__name__}, expected an object")
    if _escapes(name):
        _report(
            f"{where}: the name is an absolute path or leaves the images folder ('..'); "
            f"the image is read from outside the images folder",
            strict,
        )
    words_raw = img.get("words") or {}
    if not isinstance(words_raw, dict):
        raise DataError(f'{where}: "words" is {type(words_raw).__name__}, expected an object')
    size = {}
    for key in ("img_w", "img_h"):
        size[key] = _image_size(img.get(key))
        if isinstance(size[key], str):
            _report(f"{where}: {key}={size[key]}; ignored (the image's own size is used)", strict)
            size[key] = None
    return ImageAnnotation(
        name=name, words=_parse_words(where, words_raw, strict), width=size["img_w"], height=size["img_h"]
    )


def load_annotations(path: str | os.PathLike, *, strict: bool = False) -> dict[str, ImageAnnotation]:
    """Load a competition annotation (or prediction) JSON file.

    Words whose points are unusable (not a list of [x, y] number pairs, a boolean or a
    string for a number, fewer than 3 points, NaN or infinity) are skipped with a warning
    that names the file, the image and the word; with `strict=True` they raise
    `DataError` instead; so do a word key given twice in one image (JSON keeps only the
    last), an `img_w` / `img_h` that is not a positive whole number (else ignored) and an
    image name that is an absolute path or climbs out of the images folder with '..'
    (else read from there). An image name given twice is always a `DataError`. A word of
    zero area is kept with a warning: the competition scores it (a GT word on a line
    counts 100 pseudo characters, a detection on a line is a false positive); training
    leaves it out of the targets (`Word.has_area`). Unknown fields are ignored. Points
    outside the image are kept here and clamped where the image size is known
    (`clamp_polygon`).
    """
    path = Path(path)
    doc = read_json(path, object_pairs_hook=_keep_duplicates)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise DataError(f'{path}: expected an object with an "images" object at the top level')
    twice = getattr(doc["images"], "duplicates", ())
    if twice:
        raise DataError(
            f"{path}: image {twice[0]!r} is listed more than once (JSON keeps only the last entry); "
            f"merge its words into one entry"
        )
    return {name: _parse_image(path, name, img, strict) for name, img in doc["images"].items()}


def clamp_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clamp points into the image (real files have negative and out-of-image points).

    float64 points stay float64 (ground truth keeps its precision until the metric
    rounds it); float32 stay float32 (what OpenCV takes); integers become float64.
    """
    out = points.astype(np.promote_types(points.dtype, np.float32), copy=True)
    np.clip(out[:, 0], 0, width - 1, out=out[:, 0])
    np.clip(out[:, 1], 0, height - 1, out=out[:, 1])
    return out


# ----------------------------------------------------------------------------- predictions

Prediction = tuple  # (polygon (K, 2) array, score float | None)


def integer_points(poly) -> np.ndarray:
    """A polygon's points rounded to whole pixels, as prediction files and the CSV hold them."""
    return np.rint(np.asarray(poly)).astype(int)


def predictions_to_json(preds: Mapping[str, Sequence[tuple[np.ndarray, float | None]]]) -> dict:
    """Build the prediction document: the annotation schema, integer points, a score per word."""
    images = {}
    for name, dets in preds.items():
        words = {}
        for i, (poly, score) in enumerate(dets, start=1):
            entry = {"points": integer_points(poly).tolist()}
            if score is not None and math.isfinite(float(score)):
                entry["score"] = round(float(score), 5)
            words[f"{i:04d}"] = entry
        images[name] = {"words": words}
    return {"images": images}


def save_predictions(path: str | os.PathLike, preds, *, overwrite: bool = True) -> Path:
    """Write a prediction JSON atomically."""
    return atomic_write_json(path, predictions_to_json(preds), overwrite=overwrite)


def load_predictions(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Polygons per image from a prediction JSON or a submission CSV (by extension).

    An image with more than `MAX_DETECTIONS` polygons gets a warning naming the file,
    the image and the count: the scorer reads only the first `MAX_DETECTIONS`.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        preds = read_submission(path)
    else:
        preds = {name: img.polygons() for name, img in load_annotations(path).items()}
    for name, polys in preds.items():
        if len(polys) > MAX_DETECTIONS:
            log.warning(
                "%s: image %r has %d polygons; the scorer reads only the first %d",
                path,
                name,
                len(polys),
                MAX_DETECTIONS,
            )
    return preds


# ----------------------------------------------------------------------------- submission CSV

CSV_HEADER = ("filename", "polygons")


def format_polygons(polys: Sequence[np.ndarray]) -> str:
    """`x1 y1 x2 y2 ...` per polygon (integers), polygons joined by `|`."""
    parts = []
    for poly in polys:
        pts = integer_points(poly).reshape(-1)
        parts.append(" ".join(str(v) for v in pts))
    return "|".join(parts)


def submission_csv_text(preds: Mapping[str, Sequence[np.ndarray]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for name in sorted(preds):
        writer.writerow([name, format_polygons(preds[name])])
    return buf.getvalue()


def write_submission(
    path: str | os.PathLike, preds: Mapping[str, Sequence[np.ndarray]], *, overwrite: bool = True
) -> Path:
    """Write the submission CSV atomically; one row per image, an empty field for none."""
    return atomic_write_text(path, submission_csv_text(preds), overwrite=overwrite)


_CSV_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
_CSV_NON_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity)", re.ASCII | re.IGNORECASE)
CSV_FIELD_LIMIT = 64 * 2**20
"""Longest CSV field read, in characters. The csv module's default, 131,072, is a row
of some 6,000 polygons, which a raw model output can reach; 500 polygons of 8-digit
coordinates take about 40,000. Past this bound a file is refused, not read into memory."""


@contextlib.contextmanager
def csv_field_limit() -> Iterator[None]:
    """Set the csv module's field size limit (process-wide) to `CSV_FIELD_LIMIT` for the
    block, then restore it; a longer field is a `csv.Error`."""
    old = csv.field_size_limit()
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_polygons(where: str, text: str) -> list[np.ndarray]:
    """The polygons of one CSV `polygons` field; `where` is "FILE: row N image 'NAME'".

    A coordinate that is not an ASCII decimal number is a `DataError`; a polygon with a
    `nan` / `inf` coordinate (or one past float64) is skipped with a warning, as
    `load_annotations` skips such words."""
    polys = []
    for j, chunk in enumerate(text.split("|"), start=1):
        tokens = chunk.split()
        if not tokens:
            continue
        bad = [t for t in tokens if not (_CSV_NUMBER.fullmatch(t) or _CSV_NON_FINITE.fullmatch(t))]
        if bad:
            raise DataError(f"{where} polygon {j}: coordinate {bad[0]!r} is not a number")
        if len(tokens) % 2:
            raise DataError(f"{where} polygon {j}: odd number of coordinates ({len(tokens)})")
        values = np.array([float(t) for t in tokens], dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(values).all():
            log.warning("%s polygon %d: points contain NaN or infinity; skipped", where, j)
            continue
        polys.append(values)
    return polys


def read_submission(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a submission CSV back into polygons per image, (K, 2) float64 each.

    Errors (`DataError`) name the file and the row: not a readable UTF-8 file, a header
    other than `filename,polygons`, a row without two fields, an image listed twice, a
    coordinate that is not a number, an odd number of coordinates, not CSV at all.
    A polygon with a `nan` / `inf` coordinate is skipped with a warning.
    """
    path = Path(path)
    text = read_text(path)
    out: dict[str, list[np.ndarray]] = {}
    first_row: dict[str, int] = {}
    with csv_field_limit():
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
                raise DataError(f"{path}: header must be 'filename,polygons', found {header!r}")
            for row_no, row in enumerate(reader, start=2):
                if len(row) != 2:
                    raise DataError(f"{path}: row {row_no}: expected 2 fields, found {len(row)}")
                name, field_text = row
                if name in first_row:
                    raise DataError(
                        f"{path}: row {row_no}: image {name!r} is listed more than once "
                        f"(first at row {first_row[name]})"
                    )
                first_row[name] = row_no
                out[name] = _csv_polygons(f"{path}: row {row_no} image {name!r}", field_text)
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: not CSV ({err})") from None
    return out
