"""Fold splitting: deterministic, stratified, disjoint, covering, balanced; manifest round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from hrnet_sweep.errors import ConfigError, DataError
from hrnet_sweep.folds import assign_folds, read_manifest, split, write_manifest
from hrnet_sweep.formats import ImageAnnotation, Word, load_annotations

pytestmark = pytest.mark.unit


def _dataset(n: int = 103, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    names = [f"img_{i:04d}.jpg" for i in range(n)]
    # Receipts: mostly dense, some nearly empty, a long tail of very dense ones.
    counts = [max(0, int(rng.lognormvariate(4.0, 0.7))) for _ in names]
    return names, counts


def _annotations(names, counts) -> dict:
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], np.float32)
    return {n: ImageAnnotation(n, [Word(f"{k:04d}", square) for k in range(c)]) for n, c in zip(names, counts)}


@pytest.mark.parametrize("num_folds", [2, 5, 7])
def test_disjoint_covering_balanced(num_folds):
    names, counts = _dataset()
    assignment = assign_folds(names, counts, num_folds, seed=42)
    assert set(assignment) == set(names)
    assert set(assignment.values()) == set(range(num_folds))
    sizes = np.bincount(list(assignment.values()), minlength=num_folds)
    assert sizes.max() - sizes.min() <= 1
    # split(): train and val disjoint, together everything, val == the fold.
    anns = _annotations(names, counts)
    vals = []
    for fold in range(num_folds):
        train, val = split(anns, fold, num_folds, seed=42)
        assert not set(train) & set(val)
        assert set(train) | set(val) == set(names)
        assert val == sorted(n for n, f in assignment.items() if f == fold)
        vals += val
    assert sorted(vals) == sorted(names)


def test_stable_under_input_order_and_repeats():
    names, counts = _dataset()
    ref = assign_folds(names, counts, 5, seed=3)
    for k in range(5):
        pairs = list(zip(names, counts))
        random.Random(k).shuffle(pairs)
        shuffled = assign_folds([p[0] for p in pairs], [p[1] for p in pairs], 5, seed=3)
        assert shuffled == ref
    assert assign_folds(names, counts, 5, seed=3) == ref
    anns = _annotations(names, counts)
    reordered = dict(reversed(list(anns.items())))
    assert split(anns, 2, 5, 3) == split(reordered, 2, 5, 3)


def test_stratified_by_word_count():
    names, counts = _dataset(n=500)
    assignment = assign_folds(names, counts, 5, seed=1)
    counts_by_name = dict(zip(names, counts))
    global_mean, global_std = np.mean(counts), np.std(counts)
    for fold in range(5):
        fold_counts = [counts_by_name[n] for n, f in assignment.items() if f == fold]
        # A random split would wander by ~std/sqrt(100) = 10% of std; dealing sorted
        # blocks keeps each fold's mean within a few percent of the global one.
        assert abs(np.mean(fold_counts) - global_mean) < 0.05 * global_std
        assert abs(np.median(fold_counts) - np.median(counts)) <= 0.1 * global_std


def test_seed_changes_split():
    names, counts = _dataset()
    a = assign_folds(names, counts, 5, seed=0)
    b = assign_folds(names, counts, 5, seed=1)
    assert a != b
    changed = sum(a[n] != b[n] for n in names)
    assert changed > len(names) // 2


@pytest.mark.parametrize(
    ("fold", "num_folds", "n", "needle"),
    [(5, 5, 20, "data.fold=5"), (-1, 5, 20, "data.fold=-1"), (0, 1, 20, "data.num_folds=1"), (0, 6, 5, "5 images")],
)
def test_bad_fold_args_name_values(fold, num_folds, n, needle):
    names, counts = _dataset(n)
    with pytest.raises(ConfigError, match=needle):
        split(_annotations(names, counts), fold, num_folds, seed=0)


def test_duplicate_names_rejected():
    with pytest.raises(DataError, match="duplicate"):
        assign_folds(["a.jpg", "b.jpg", "a.jpg"], [1, 2, 3], 2, seed=0)


def test_manifest_round_trip(tmp_path):
    names, counts = _dataset(n=23)
    doc = {
        "images": {
            n: {"words": {f"{k:04d}": {"points": [[0, 0], [4, 0], [4, 4], [0, 4]]} for k in range(c)}}
            for n, c in zip(names, counts)
        }
    }
    ann_path = tmp_path / "train.json"
    ann_path.write_text(json.dumps(doc))
    anns = load_annotations(ann_path)
    assignment = assign_folds(list(anns), [len(a.words) for a in anns.values()], 4, seed=7)
    out = write_manifest(tmp_path / "folds" / "manifest.json", ann_path, assignment, 4, 7)
    manifest = read_manifest(out)
    assert manifest.assignment == assignment
    assert (manifest.num_folds, manifest.seed) == (4, 7)
    assert manifest.annotations == str(ann_path)
    assert sum(manifest.fold_words) == sum(counts)
    assert manifest.fold_names(1) == split(anns, 1, 4, 7)[1]
    assert manifest.matches(ann_path, 4, 7)
    assert not manifest.matches(ann_path, 5, 7)
    ann_path.write_text(json.dumps(doc) + " ")  # same data, other bytes: a different file
    assert not manifest.matches(ann_path, 4, 7)
    assert not list((tmp_path / "folds").glob("*.tmp"))


def test_read_manifest_rejects_garbage(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"version": 1, "folds": "x"}))
    with pytest.raises(DataError, match="m.json"):
        read_manifest(bad)
