"""Files in and out: atomic writes, the competition annotation JSON, prediction JSON and
the submission CSV (DESIGN.md section 3).

Everything that writes goes through `atomic_path`, so a crash or a full disk half way
never leaves a half-written preset, CSV, manifest or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from .constants import MAX_DETECTIONS
from .errors import DataError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise DataError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, *, what: str = "output", overwrite: bool = True) -> Path:
    """Fail before any expensive work when `path` cannot be written later.

    Refused, each with a `DataError` naming the path: an empty name, a directory, an
    existing file without `overwrite`, a parent that is a regular file, and a folder where
    no file can be created (read-only filesystem, permissions). Missing parent folders are
    created, as the atomic write would create them.
    """
    if not str(path).strip():
        raise DataError(f"{what}: the path is empty; name a file")
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{what} {path}: is a directory; name a file inside it")
    if path.exists() and not overwrite:
        raise DataError(f"{what} {path} exists; pass --force to overwrite it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"{what} {path}: cannot be created, {folder} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(f"{what} {path}: cannot write there ({err.strerror or err})") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, *, overwrite: bool = True, indent: int | None = None) -> Path:
    """Write `obj` as JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False), overwrite=overwrite)


def read_json(path: str | os.PathLike, *, object_pairs_hook=None):
    """Read a JSON file; a syntax error names the file, the line and the column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from None


# ----------------------------------------------------------------------------- annotations


@dataclass
class Word:
    """One annotated word: its key in the file and its polygon, (K, 2) float32 pixels."""

    key: str
    points: np.ndarray


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


def _parse_points(raw) -> np.ndarray | str:
    """Return a (K, 2) float32 array, or a string saying why the points are unusable."""
    if not isinstance(raw, (list, tuple)):
        return f"points is {type(raw).__name__}, not a list"
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return "points are not all numbers"
    if arr.ndim != 2 or arr.shape[1] != 2:
        return f"points have shape {list(arr.shape)}, expected [K, 2]"
    if not np.isfinite(arr).all():
        return "points contain NaN or infinity"
    if len(arr) < 3:
        return f"{len(arr)} points, a polygon needs at least 3"
    # Shoelace area: a zero-area polygon cannot be drawn, shrunk or matched.
    x, y = arr[:, 0], arr[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if area < 1e-6:
        return "zero area"
    # Far out-of-image points are clamped to the image later; bound them first so the
    # float32 cast cannot overflow to infinity.
    return np.clip(arr, -1e7, 1e7).astype(np.float32)


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


def load_annotations(path: str | os.PathLike, *, strict: bool = False) -> dict[str, ImageAnnotation]:
    """Load a competition annotation (or prediction) JSON file.

    Words whose points are unusable (fewer than 3 points, NaN, strings, zero area) are
    skipped with a warning that names the file, the image and the word; with
    `strict=True` they raise `DataError` instead; so is a word key given twice in one
    image (JSON keeps only the last). An image name given twice is always a `DataError`.
    Unknown fields are ignored. Points outside the image are kept here and clamped where
    the image size is known (`clamp_polygon`).
    """
    path = Path(path)
    doc = read_json(path, object_pairs_hook=_keep_duplicates)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise DataError(f'{path}: expected an object with an "images" object at the top level')
    twice = getattr(doc["images"], "duplicates", ())
    if twice:
        raise DataError(f"{path}: image {twice[0]!r} is listed more than once (JSON keeps only the last entry); "
                        f"merge its words into one entry")
    out: dict[str, ImageAnnotation] = {}
    for name, img in doc["images"].items():
        if not isinstance(img, dict):
            raise DataError(f"{path}: image {name!r} is {type(img).__name__}, expected an object")
        words_raw = img.get("words") or {}
        if not isinstance(words_raw, dict):
            raise DataError(f'{path}: image {name!r}: "words" is {type(words_raw).__name__}, expected an object')
        for key in getattr(words_raw, "duplicates", ()):
            msg = f"{path}: image {name!r} word {key!r} is listed more than once; only its last entry is kept"
            if strict:
                raise DataError(msg)
            log.warning(msg)
        words: list[Word] = []
        for key, word in words_raw.items():
            points = _parse_points(word.get("points") if isinstance(word, dict) else None)
            if isinstance(points, str):
                msg = f"{path}: image {name!r} word {key!r}: {points}; skipped"
                if strict:
                    raise DataError(msg)
                log.warning(msg)
                continue
            words.append(Word(str(key), points))
        width, height = img.get("img_w"), img.get("img_h")
        out[name] = ImageAnnotation(
            name=name,
            words=words,
            width=int(width) if isinstance(width, (int, float)) and width > 0 else None,
            height=int(height) if isinstance(height, (int, float)) and height > 0 else None,
        )
    return out


def clamp_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clamp points into the image (real files have negative and out-of-image points)."""
    out = points.astype(np.float32, copy=True)
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
    """Polygons per image from a prediction JSON or a submission CSV (by extension)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_submission(path)
    return {name: img.polygons() for name, img in load_annotations(path).items()}


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


def write_submission(path: str | os.PathLike, preds: Mapping[str, Sequence[np.ndarray]], *, overwrite: bool = True) -> Path:
    """Write the submission CSV atomically; one row per image, an empty field for none."""
    return atomic_write_text(path, submission_csv_text(preds), overwrite=overwrite)


def read_submission(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a submission CSV back into polygons per image; errors name the row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out: dict[str, list[np.ndarray]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise DataError(f"{path}: header must be 'filename,polygons', found {header!r}")
        for row_no, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise DataError(f"{path}: row {row_no}: expected 2 fields, found {len(row)}")
            name, field_text = row
            polys = []
            for j, chunk in enumerate(filter(None, field_text.split("|"))):
                try:
                    vals = [float(v) for v in chunk.split()]
                except ValueError:
                    raise DataError(f"{path}: row {row_no} ({name}) polygon {j}: non-numeric coordinate") from None
                if len(vals) % 2:
                    raise DataError(f"{path}: row {row_no} ({name}) polygon {j}: odd number of coordinates")
                polys.append(np.asarray(vals, dtype=np.float32).reshape(-1, 2))
            out[name] = polys
    return out


def cap_detections(dets: list, limit: int = MAX_DETECTIONS) -> list:
    """Keep the first `limit` detections, as the scorer does."""
    return list(dets[:limit])
