"""Deterministic, stratified k-fold split of an annotation file, and its manifest.

The split is a pure function of the set of `(image name, word count)` pairs, the number
of folds and the seed: the sweep (fold 0) and the k-fold retrain compute the same folds
from the same file, whatever order the file lists its images in. Images are stratified
by words per image so that every fold sees the same mix of sparse and dense receipts.

How: sort the images by `(word count, sha256(seed, name))`, cut the sorted list into
blocks of `num_folds` consecutive images (images of similar density) and deal each block
to the folds in a seeded random order. Every fold gets one image of every full block,
so fold sizes differ by at most one and per-fold word statistics follow the global ones.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError
from .files import atomic_write_json, read_json
from .formats import load_annotations

__all__ = [
    "Manifest",
    "assign_folds",
    "check_fold_args",
    "read_manifest",
    "sha256_file",
    "split",
    "word_counts",
    "write_manifest",
]

MANIFEST_VERSION = 1


def check_fold_args(num_folds: int, num_images: int, fold: int | None = None) -> None:
    """Reject a fold count or fold index that cannot be split, naming the values."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ConfigError(f"data.num_folds={num_folds!r}: need an integer >= 2")
    if num_folds > num_images:
        raise ConfigError(f"data.num_folds={num_folds} is more than the {num_images} images to split")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds):
        raise ConfigError(f"data.fold={fold!r}: allowed 0..{num_folds - 1} for data.num_folds={num_folds}")


def _tiebreak(seed: int, name: str) -> str:
    # sha256, not hash(): Python's str hash is salted per process.
    return hashlib.sha256(f"{seed}\x00{name}".encode()).hexdigest()


def assign_folds(names: Sequence[str], word_counts: Sequence[int], num_folds: int, seed: int) -> dict[str, int]:
    """Assign every image to one of `num_folds` folds, stratified by its word count.

    Args:
        names: image names, unique.
        word_counts: words per image, aligned with `names`.
        num_folds: number of folds, 2 <= num_folds <= len(names).
        seed: split seed; another seed gives another split.

    Returns:
        `{name: fold}` for every name, keys in sorted order.

    Raises:
        ConfigError: a bad `num_folds`. DataError: duplicate names or misaligned counts.
    """
    names, counts = list(names), [int(c) for c in word_counts]
    if len(names) != len(counts):
        raise DataError(f"{len(names)} image names but {len(counts)} word counts")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"duplicate image names: {dup[:5]}")
    check_fold_args(num_folds, len(names))
    order = sorted(zip(counts, names), key=lambda cn: (cn[0], _tiebreak(seed, cn[1])))
    rng = random.Random(f"hrnet_sweep.folds:{seed}:{num_folds}")
    out: dict[str, int] = {}
    for start in range(0, len(order), num_folds):
        deal = list(range(num_folds))
        rng.shuffle(deal)
        for (_, name), fold in zip(order[start : start + num_folds], deal):
            out[name] = fold
    return dict(sorted(out.items()))


def word_counts(annotations: Mapping) -> dict[str, int]:
    """Words per image of a loaded annotation dict (`formats.load_annotations`)."""
    out = {}
    for name, ann in annotations.items():
        words = getattr(ann, "words", ann)
        if isinstance(words, Mapping) and "words" in words:  # a raw JSON image entry
            words = words["words"] or {}
        out[name] = len(words)
    return out


def fold_assignment(annotations: Mapping, num_folds: int, seed: int) -> tuple[dict[str, int], dict[str, int]]:
    """(image -> fold, image -> word count) of a loaded annotation dict."""
    counts = word_counts(annotations)
    check_fold_args(num_folds, len(counts))
    return assign_folds(list(counts), list(counts.values()), num_folds, seed), counts


def split(annotations: Mapping, fold: int, num_folds: int, seed: int) -> tuple[list[str], list[str]]:
    """Train and validation image names (each sorted) for `fold` of a loaded annotation dict."""
    check_fold_args(num_folds, len(annotations), fold)
    assignment, _ = fold_assignment(annotations, num_folds, seed)
    train = [n for n, f in assignment.items() if f != fold]
    val = [n for n, f in assignment.items() if f == fold]
    return train, val


# ----------------------------------------------------------------------------- manifest


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A written fold split: where it came from and which image is in which fold."""

    annotations: str
    sha256: str
    num_folds: int
    seed: int
    assignment: dict[str, int]
    fold_words: tuple[int, ...]

    def fold_names(self, fold: int) -> list[str]:
        check_fold_args(self.num_folds, len(self.assignment), fold)
        return sorted(n for n, f in self.assignment.items() if f == fold)

    def matches(self, annotations_path: str | os.PathLike, num_folds: int, seed: int) -> bool:
        """True when this manifest was written for this file content, fold count and seed."""
        return (self.num_folds, self.seed) == (num_folds, seed) and self.sha256 == sha256_file(annotations_path)


def write_manifest(
    path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    assignment: Mapping[str, int],
    num_folds: int,
    seed: int,
    *,
    word_counts_by_name: Mapping[str, int] | None = None,
) -> Path:
    """Write the fold manifest atomically (JSON).

    It records the annotation file's path and the sha256 of its content, `num_folds`,
    `seed` and, per fold, the sorted image names, the image count and the word total.
    Word counts are read from the annotation file unless given.
    """
    annotations_path = Path(annotations_path)
    if not annotations_path.is_file():
        raise DataError(f"{annotations_path}: file not found")
    check_fold_args(num_folds, len(assignment))
    if word_counts_by_name is None:
        word_counts_by_name = word_counts(load_annotations(annotations_path))
    missing = sorted(set(assignment) - set(word_counts_by_name))
    if missing:
        raise DataError(f"{annotations_path}: {len(missing)} assigned images are not in the file, e.g. {missing[:3]}")
    bad = {n: f for n, f in assignment.items() if not (isinstance(f, int) and 0 <= f < num_folds)}
    if bad:
        raise ConfigError(f"fold numbers outside 0..{num_folds - 1}: {dict(list(bad.items())[:3])}")
    folds = []
    for k in range(num_folds):
        names = sorted(n for n, f in assignment.items() if f == k)
        folds.append(
            {
                "fold": k,
                "num_images": len(names),
                "num_words": sum(word_counts_by_name[n] for n in names),
                "names": names,
            }
        )
    doc = {
        "version": MANIFEST_VERSION,
        "annotations": str(annotations_path),
        "sha256": sha256_file(annotations_path),
        "num_folds": num_folds,
        "seed": seed,
        "folds": folds,
    }
    return atomic_write_json(path, doc, indent=1)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest written by `write_manifest`; one of the wrong shape raises a
    `DataError` naming the file and the key (`folds.K.names`, ...)."""
    from .files import field, mapping

    doc = mapping(read_json(path), path)
    version = doc.get("version")
    if version != MANIFEST_VERSION:
        raise DataError(f"{path}: manifest version {version!r}, expected {MANIFEST_VERSION}")
    num_folds = field(doc, "num_folds", int, path)
    seed = field(doc, "seed", int, path)
    annotations = field(doc, "annotations", str, path)
    sha = field(doc, "sha256", str, path)
    folds = field(doc, "folds", list, path)
    assignment: dict[str, int] = {}
    words: dict[int, int] = {}
    for i, entry in enumerate(folds):
        mapping(entry, path, f"folds.{i}")
        fold = field(entry, "fold", int, path, prefix=f"folds.{i}.")
        words[fold] = field(entry, "num_words", int, path, prefix=f"folds.{i}.")
        for name in field(entry, "names", list, path, prefix=f"folds.{i}."):
            if not isinstance(name, str):
                raise DataError(f"{path}: key folds.{i}.names holds {name!r}, not an image name")
            if name in assignment:
                raise DataError(f"{path}: image {name!r} is in folds {assignment[name]} and {fold}")
            assignment[name] = fold
    if sorted(words) != list(range(num_folds)) or len(folds) != num_folds:
        raise DataError(f"{path}: folds {[e.get('fold') for e in folds]} do not match num_folds={num_folds}")
    return Manifest(
        annotations=annotations,
        sha256=sha,
        num_folds=num_folds,
        seed=seed,
        assignment=dict(sorted(assignment.items())),
        fold_words=tuple(words[k] for k in range(num_folds)),
    )
