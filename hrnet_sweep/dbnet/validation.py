"""Post-processing search on probability maps: at every validation epoch (`ValidationSearch`,
in worker processes beside training) and on a retrain's out-of-fold maps
(`tune_postprocess`, what `hrnet_sweep tune-postprocess` runs). One implementation for both.

Why at validation: a run's H-Mean at the preset's fixed thresholds measures how well its
maps happen to suit those thresholds as much as how good they are, so sweeps, early
stopping and checkpoint selection compared runs and epochs unfairly (issue 14). With
`models.postprocess.tune_on_val` (default) `val/hmean` is the H-Mean at the best setting
of that epoch's maps; the fixed setting's value is `val/hmean_fixed`, and the chosen
setting `val/pp_*`. The fixed setting is always among those scored, so
`val/hmean >= val/hmean_fixed`.

The search is cheap where the algorithm allows (`dbnet.postprocess` stages):

- contours once per `thresh`, candidate scores once per (thresh, mode), the unclip once
  per (thresh, mode, unclip_ratio); `box_thresh` only drops candidates whose score (mean
  probability inside, independent of the unclip) is below it, so it is a filter on the
  scores, and settings that keep the same candidates are scored once;
- the macro H-Mean is a mean over images, so images are split across worker processes
  (at validation: one task per batch, sent while the next batches run through the
  network) and each worker sums every setting's per-image precision, recall, H-Mean;
- a coarse grid first, then half steps around the best coarse setting (`refine`);
- at validation, training waits for the search at most `models.postprocess.tune_budget`
  times the epoch's training time (speckled maps of a model leaving its plateau made
  early epochs wait 30-36 s against 60 s of training): the fixed setting first, then one
  thresh at a time over every image, so a cut keeps whole passes and their best.

Maps are the letterboxed network maps' content as uint8 with the original image's size
(validation's, and the out-of-fold PNGs): what prediction post-processes
(`dbnet.postprocess`), so a setting chosen here gives the same polygons there.
"""

from __future__ import annotations

import heapq
import logging
import math
import multiprocessing
import os
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..children import helper_failure, one_line
from ..config import PostprocessConfig
from ..errors import UserError
from .postprocess import find_contours, map_frame, score_candidates, to_image, unclip_candidates

__all__ = [
    "CHECKPOINT_KEY",
    "PARAMS",
    "VAL_GRID",
    "Grid",
    "SearchResult",
    "Setting",
    "ValidationSearch",
    "detections",
    "draw_detections",
    "image_scores",
    "rank",
    "refine_settings",
    "score_settings",
    "tune_postprocess",
]

log = logging.getLogger(__name__)

PARAMS = ("thresh", "box_thresh", "unclip_ratio", "use_polygon")
CHECKPOINT_KEY = "tuned_postprocess"
"""Checkpoint entry with the setting chosen at that epoch's validation (and its H-Mean):
`dbnet.inference.load_checkpoint` applies it to the checkpoint's config."""


@dataclass(frozen=True)
class Setting:
    thresh: float
    box_thresh: float
    unclip_ratio: float
    use_polygon: bool

    @classmethod
    def of(cls, values: Any) -> Setting:
        """The setting of a `PostprocessConfig` or of a result row (a mapping)."""
        get = values.get if isinstance(values, Mapping) else lambda k: getattr(values, k)
        return cls(*(get(k) for k in PARAMS))

    def as_dict(self) -> dict:
        return {
            "thresh": self.thresh,
            "box_thresh": self.box_thresh,
            "unclip_ratio": self.unclip_ratio,
            "use_polygon": self.use_polygon,
        }


@dataclass(frozen=True)
class Grid:
    """Values to search. `refine`: after the coarse grid, search half-steps around the best
    (of thresh and box_thresh, and of unclip_ratio too with `refine_unclip`)."""

    thresh: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)
    box_thresh: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    unclip_ratio: tuple[float, ...] = (1.3, 1.5, 1.7, 2.0)
    use_polygon: tuple[bool, ...] = (True, False)
    refine: bool = True
    refine_unclip: bool = True

    def __post_init__(self) -> None:
        for name in PARAMS:
            if not getattr(self, name):
                raise UserError(f"grid {name}: no values")
        for name in ("thresh", "box_thresh"):
            bad = [v for v in getattr(self, name) if not 0 < v < 1]
            if bad:
                raise UserError(f"grid {name}={bad[0]}: allowed 0 < value < 1")
        bad = [v for v in self.unclip_ratio if not v > 0]
        if bad:
            raise UserError(f"grid unclip_ratio={bad[0]}: allowed value > 0")

    def settings(self) -> list[Setting]:
        return [
            Setting(t, b, u, p)
            for p in self.use_polygon
            for t in self.thresh
            for u in self.unclip_ratio
            for b in self.box_thresh
        ]


VAL_GRID = Grid(thresh=(0.2, 0.35, 0.5), box_thresh=(0.3, 0.5, 0.7), unclip_ratio=(1.5, 2.0), refine_unclip=False)
"""At validation: 36 coarse settings (3 contour passes per image), then at most 8 half steps
of thresh and box_thresh around the best. Measured on sroie-mini at 512 px (2 cores): the
first grid (48 coarse + 26 refined) took 9-24 s of worker CPU per validation once the
model detected text, against 45 s training epochs; this one 4.3-5.4 s, and a tuned epoch
took 1.06x a fixed one (benchmarks/bench_validation.py from a trained checkpoint)."""


def _half_steps(values: Sequence[float], best: float, lo: float, hi: float) -> tuple[float, ...]:
    """The best value and half a grid step either side, kept inside (lo, hi)."""
    vals = sorted(set(values))
    steps = [b - a for a, b in zip(vals, vals[1:])]
    half = (min(steps) if steps else abs(best) * 0.1 or 0.05) / 2
    out = {round(best, 4)}
    for v in (best - half, best + half):
        if lo < v < hi:
            out.add(round(v, 4))
    return tuple(sorted(out))


def refine_settings(grid: Grid, rows: Sequence[Mapping[str, Any]]) -> list[Setting]:
    """Half steps around the best of `rows` (in its mode), less the settings already scored."""
    if not grid.refine or not rows:
        return []
    best = Setting.of(rank(rows)[0])
    fine = Grid(
        thresh=_half_steps(grid.thresh, best.thresh, 0, 1),
        box_thresh=_half_steps(grid.box_thresh, best.box_thresh, 0, 1),
        unclip_ratio=(
            _half_steps(grid.unclip_ratio, best.unclip_ratio, 0, math.inf)
            if grid.refine_unclip
            else (best.unclip_ratio,)
        ),
        use_polygon=(best.use_polygon,),
        refine=False,
    )
    seen = {Setting.of(r) for r in rows}
    return [s for s in fine.settings() if s not in seen]


def rank(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Best first by macro H-Mean; ties: the setting closest to the DB paper's defaults,
    then polygons."""
    return sorted(
        (dict(r) for r in rows),
        key=lambda r: (
            -round(r["hmean"], 9),
            abs(r["thresh"] - 0.3) + abs(r["box_thresh"] - 0.6) + abs(r["unclip_ratio"] - 1.5),
            not r["use_polygon"],
        ),
    )


# ----------------------------------------------------------------------------- scoring


def _load_map(m: Any) -> np.ndarray:
    """A map as given (uint8 0..255 or float 0..1), or read from a PNG path."""
    if isinstance(m, (str, os.PathLike)):
        import cv2

        path = m
        m = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise UserError(f"{path}: cannot read the cached map")
    return np.asarray(m)


def detections(
    source: Any, image_size: tuple[int, int] | None, settings: Sequence[Setting], fixed: Mapping[str, Any]
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(index of the setting, its polygons in original pixels) for every setting: what
    `dbnet.postprocess.detect` gives with it, the stages shared (see the module doc).

    `source` covers the whole image (no padding); `image_size` is the image's (h, w)
    when the map is smaller; `fixed`: `max_candidates`, `min_size` (config defaults)."""
    frame = map_frame(_load_map(source), None, image_size)
    before, after = frame.min_sides(fixed.get("min_size", PostprocessConfig().min_size))
    max_candidates = fixed.get("max_candidates", PostprocessConfig().max_candidates)
    plan: dict[float, dict[bool, dict[float, list[tuple[int, float]]]]] = {}
    for i, s in enumerate(settings):
        plan.setdefault(s.thresh, {}).setdefault(s.use_polygon, {}).setdefault(s.unclip_ratio, []).append(
            (i, s.box_thresh)
        )
    for thresh, modes in plan.items():
        contours = find_contours(frame.pred, thresh, max_candidates)
        for use_polygon, unclips in modes.items():
            lowest = min(b for group in unclips.values() for _, b in group)
            cands = [
                c
                for c in score_candidates(frame.pred, contours, use_polygon=use_polygon, min_side=before)
                if c[1] >= lowest
            ]
            for unclip, group in unclips.items():
                found = unclip_candidates(cands, unclip_ratio=unclip, min_side=after, use_polygon=use_polygon)
                polys, scores = to_image(found, frame, use_polygon=use_polygon)
                for i, b in group:
                    yield i, [p for p, sc in zip(polys, scores) if sc >= b]


def image_scores(
    source: Any,
    image_size: tuple[int, int] | None,
    gt: Sequence[np.ndarray],
    settings: Sequence[Setting],
    fixed: Mapping[str, Any],
) -> np.ndarray:
    """(len(settings), 3) precision, recall, H-Mean of one image under each setting (see
    `detections`); settings that keep the same polygons are scored once."""
    from ..metric import evaluate_image

    out = np.zeros((len(settings), 3), np.float64)
    seen: dict[tuple, tuple] = {}  # a higher box_thresh of one pass keeps a subset: its count names it
    for i, kept in detections(source, image_size, settings, fixed):
        s = settings[i]
        key = (s.thresh, s.use_polygon, s.unclip_ratio, len(kept))
        if key not in seen:
            r = evaluate_image(gt, kept)
            seen[key] = (r.precision, r.recall, r.hmean)
        out[i] = seen[key]
    return out


def score_chunk(items: Sequence[tuple], settings: Sequence[Setting], fixed: Mapping[str, Any]) -> np.ndarray:
    """Per setting: summed per-image (precision, recall, hmean) over `items`, each
    (map or PNG path, image size (h, w) or None, GT polygons)."""
    sums = np.zeros((len(settings), 3), np.float64)
    for source, image_size, gt in items:
        sums += image_scores(source, image_size, gt, settings, fixed)
    return sums


def _timed_chunk(items: Sequence[tuple], settings: Sequence[Setting], fixed: Mapping[str, Any]) -> tuple:
    t = time.process_time()
    return score_chunk(items, settings, fixed), time.process_time() - t


def _rows(settings: Sequence[Setting], sums: np.ndarray, n: int, stage: str | None = None) -> list[dict]:
    extra = {"stage": stage} if stage else {}
    return [
        {**s.as_dict(), "precision": float(p / n), "recall": float(r / n), "hmean": float(h / n), **extra}
        for s, (p, r, h) in zip(settings, sums)
    ]


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: a fork of a process with torch / OpenCV thread pools can hang in the child
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start, initargs=(os.getpid(),)
    )


def _worker_start(parent: int) -> None:
    """One OpenCV thread per worker; the worker dies with the training process (a killed
    run leaves no search workers behind)."""
    import cv2

    from ..children import die_with_parent

    die_with_parent(parent)
    cv2.setNumThreads(1)


def _ready() -> bool:
    """A first task per worker, so each starts (and imports) while training runs."""
    return True


def score_settings(
    items: Sequence[tuple], settings: Sequence[Setting], *, fixed: Mapping[str, Any] | None = None, workers: int = 1
) -> list[dict]:
    """Macro precision / recall / H-Mean of every setting over `items` (see `score_chunk`)."""
    fixed = dict(fixed or {})
    items = list(items)
    if not items:
        raise UserError("no probability maps to tune on")
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        return _rows(settings, score_chunk(items, settings, fixed), len(items))
    chunks = [items[i::workers] for i in range(workers)]
    sums = np.zeros((len(settings), 3), np.float64)
    pool = _pool(workers)
    try:
        futures = [pool.submit(score_chunk, chunk, settings, fixed) for chunk in chunks]
        for future, chunk in zip(futures, chunks):
            try:
                sums += future.result()
            except Exception as err:  # a worker killed or out of memory: its images are scored here
                log.warning(
                    "post-processing search worker failed (%s); scoring its %d images in this process",
                    helper_failure(err) or one_line(err),
                    len(chunk),
                )
                sums += score_chunk(chunk, settings, fixed)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return _rows(settings, sums, len(items))


def tune_postprocess(
    maps: Mapping[str, Any],
    gts: Mapping[str, Sequence[np.ndarray]],
    grid: Grid | None = None,
    *,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    fixed: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> tuple[dict, list[dict]]:
    """Search post-processing settings on cached probability maps.

    Args:
        maps: image name -> probability map (float 0..1 or uint8 0..255, any size: it is
            taken to cover the whole image) or the path of a cached PNG.
        gts: image name -> ground-truth polygons in original image pixels.
        grid: the values to search (default `Grid()`).
        image_sizes: image name -> (h, w) of the original image, when a map is smaller.
        fixed: other post-processing settings (`max_candidates`, `min_size`).
        workers: processes scoring images in parallel.

    Returns:
        The best setting (with its precision, recall, hmean) and the table of every
        setting tried, best first. Ranked by macro H-Mean (per image, as the competition).
    """
    grid = grid or Grid()
    missing = sorted(set(gts) - set(maps))
    if missing:
        raise UserError(f"{len(missing)} ground-truth images have no cached map, e.g. {missing[:3]}")
    items = [(maps[n], (image_sizes or {}).get(n), list(gts[n])) for n in sorted(gts)]
    rows = [{**r, "stage": "coarse"} for r in score_settings(items, grid.settings(), fixed=fixed, workers=workers)]
    fine = refine_settings(grid, rows)
    if fine:
        rows += [{**r, "stage": "refine"} for r in score_settings(items, fine, fixed=fixed, workers=workers)]
    table = rank(rows)
    return dict(table[0]), table


# ----------------------------------------------------------------------------- at validation

MIN_BUDGET_S = 2.0
"""The search's budget at a validation epoch is never below this: toy epochs of a second
(tests, the demo) would otherwise cut every search."""


@dataclass
class SearchResult:
    """One validation epoch's search: the best setting and the fixed (preset's) one, each
    a row of `PARAMS` with its macro precision, recall and hmean; the table, best first;
    `cut`: why the search stopped short of its plan (its budget), None when it did not."""

    best: dict
    fixed: dict
    table: list[dict]
    cut: str | None = None

    def postprocess(self, pp: PostprocessConfig) -> PostprocessConfig:
        """`pp` with the best setting."""
        return pp.model_copy(update=Setting.of(self.best).as_dict())


def _by_thresh(settings: Sequence[Setting], near: float) -> list[list[Setting]]:
    """`settings` grouped by thresh (a task's contours are found once per thresh), the
    groups nearest `near` first (the preset's thresh, or the best coarse one)."""
    groups: dict[float, list[Setting]] = {}
    for s in settings:
        groups.setdefault(s.thresh, []).append(s)
    return [groups[t] for t in sorted(groups, key=lambda t: (abs(t - near), -t))]


class ValidationSearch:
    """The search over one validation epoch's maps at a time, within a time budget.

    `add` queues a batch's images (uint8 map of the content, image size, GT) and hands
    tasks to the worker processes at once; `finish` waits for the rest, scores the refined
    settings and returns a `SearchResult`. `workers=0` scores in this process, in `finish`.

    A task is one batch under one pass of settings that share a thresh. The passes run in
    order, each over every image before the next starts: first the fixed setting of `pp`
    alone (always scored: it is `val/hmean_fixed`, and the choice when nothing beats it),
    then the coarse grid's passes, then the refinement's. `finish(train_s=...)` waits at
    most `pp.tune_budget` x `train_s` (at least `MIN_BUDGET_S`); at the deadline the passes
    scored on every image are kept, the best of them is the result, and the cut is logged.
    The fixed setting's images not scored by then are scored in this process.

    Helper processes: a worker that dies (killed, out of memory) is noticed at the next
    hand-over or result, with a warning, and the search goes on in this process for the
    rest of the run; a worker still busy at the deadline (slow, or stuck) is killed and
    replaced, so no leftover work competes with the next training epoch.
    """

    def __init__(self, pp: PostprocessConfig, *, workers: int = 1, grid: Grid = VAL_GRID):
        self.fixed_setting = Setting.of(pp)
        self.fixed = {"max_candidates": pp.max_candidates, "min_size": pp.min_size}
        self.grid = grid
        self.budget = float(pp.tune_budget)
        coarse = [s for s in grid.settings() if s != self.fixed_setting]
        self.plan = [[self.fixed_setting], *_by_thresh(coarse, self.fixed_setting.thresh)]
        self.workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        self._running: dict[Future, tuple[int, int]] = {}
        self._reset()

    # -- the epoch's work: tasks (pass, batch), done in that order

    def _reset(self) -> None:
        self._batches: list[list[tuple]] = []
        self._passes = [list(p) for p in self.plan]
        self._sums: list[dict[int, np.ndarray]] = [{} for _ in self._passes]
        self._todo: list[tuple[int, int]] = []
        self.stats: dict[str, float] = {"search_cpu_s": 0.0, "search_wait_s": 0.0, "search_cut": 0.0}

    def begin_epoch(self) -> None:
        self._running.clear()  # a task left from an interrupted epoch: its result is not wanted
        self._reset()

    def add(self, items: Sequence[tuple]) -> None:
        items = list(items)
        if not items:
            return
        self.start()
        batch = len(self._batches)
        self._batches.append(items)
        for p in range(len(self._passes)):
            heapq.heappush(self._todo, (p, batch))
        self._harvest()
        self._hand_over()

    def _add_passes(self, passes: list[list[Setting]]) -> None:
        for settings in passes:
            self._passes.append(settings)
            self._sums.append({})
            for batch in range(len(self._batches)):
                heapq.heappush(self._todo, (len(self._passes) - 1, batch))

    def _score_here(self, task: tuple[int, int]) -> None:
        p, batch = task
        self._record(task, _timed_chunk(self._batches[batch], self._passes[p], self.fixed))

    def _record(self, task: tuple[int, int], result: tuple[np.ndarray, float]) -> None:
        sums, cpu_s = result
        self._sums[task[0]][task[1]] = sums
        self.stats["search_cpu_s"] += cpu_s

    def _run_until(self, deadline: float) -> bool:
        """Score the queued tasks until none is left (True) or `deadline` passes (False)."""
        while True:
            self._harvest()
            if not self._todo and not self._running:
                return True
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            if self._pool is None:
                self._score_here(heapq.heappop(self._todo))
                continue
            self._hand_over()
            if self._running:
                wait(list(self._running), timeout=None if math.isinf(left) else left, return_when=FIRST_COMPLETED)

    def _rows(self) -> list[dict]:
        """Rows of the passes scored on every image."""
        n, batches = sum(map(len, self._batches)), range(len(self._batches))
        rows = []
        for p, settings in enumerate(self._passes):
            if len(self._sums[p]) == len(self._batches):
                stage = "coarse" if p < len(self.plan) else "refine"
                rows += _rows(settings, sum(self._sums[p][b] for b in batches), n, stage)
        return rows

    def budget_s(self, train_s: float) -> float:
        """The longest `finish` waits after `train_s` seconds of training."""
        return max(MIN_BUDGET_S, self.budget * train_s)

    def finish(self, train_s: float | None = None, *, budget_s: float | None = None) -> SearchResult:
        """The epoch's result, waiting at most `budget_s` (default: `budget_s(train_s)`;
        neither: no limit); `stats` then holds the search's CPU seconds (all processes), the
        seconds `finish` waited, and `search_cut` (1.0 when the budget cut the search)."""
        start = time.perf_counter()
        if not self._batches:
            raise ValueError("no validation maps were added this epoch")
        if budget_s is None and train_s is not None:
            budget_s = self.budget_s(train_s)
        deadline = math.inf if budget_s is None else start + budget_s
        done = self._run_until(deadline)
        rows = self._rows()
        refined = False
        if done:
            fine = refine_settings(self.grid, rows)
            if fine:
                refined = True
                self._add_passes(_by_thresh(fine, Setting.of(rank(rows)[0]).thresh))
                done = self._run_until(deadline)
                rows = self._rows()
        cut = None
        if not done:
            for batch in range(len(self._batches)):  # the fixed setting is always scored
                if batch not in self._sums[0]:
                    self._score_here((0, batch))
            rows = self._rows()
            cut = self._cut_message(rows, budget_s, train_s, refined)
            log.warning(cut)
            if self._pool is not None:  # its leftover tasks would compete with the next epoch
                self._kill()
                self.start()
        self._todo, self._running = [], {}
        table = rank(rows)
        fixed = next(r for r in table if Setting.of(r) == self.fixed_setting)
        best = fixed if round(fixed["hmean"], 9) >= round(table[0]["hmean"], 9) else table[0]  # ties: keep the preset's
        self.stats["search_wait_s"] = time.perf_counter() - start
        self.stats["search_cut"] = float(cut is not None)
        return SearchResult(best, fixed, table, cut)

    def _cut_message(self, rows: list[dict], budget_s: float, train_s: float | None, refined: bool) -> str:
        planned = sum(map(len, self._passes)) if refined else f"{sum(map(len, self.plan))} coarse"
        origin = (
            f" (models.postprocess.tune_budget={self.budget:g} of a {train_s:.1f} s training epoch, "
            f"at least {MIN_BUDGET_S:g} s)"
            if train_s is not None
            else ""
        )
        return (
            f"post-processing search cut at its budget of {budget_s:.1f} s{origin}: {len(rows)} of {planned} "
            f"settings scored on all {sum(map(len, self._batches))} images; val/hmean is the best of those"
        )

    # -- the worker processes

    def start(self) -> None:
        """Start the workers now (they import their modules while training runs)."""
        if self.workers <= 0 or self._pool is not None:
            return
        pool = _pool(self.workers)
        self._pool = pool
        # shut down with this object, also when training ends by an exception (no teardown)
        self._finalizer = weakref.finalize(self, pool.shutdown, wait=False, cancel_futures=True)
        try:
            for _ in range(self.workers):
                pool.submit(_ready)
        except (BrokenProcessPool, RuntimeError, OSError) as err:
            self._workers_lost(err)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (started on the first task)."""
        return sorted(getattr(self._pool, "_processes", None) or {})

    def _hand_over(self) -> None:
        # A batch's tasks in flight per worker: a worker slower than the network then never
        # idles between two batches (one that is faster keeps up anyway); tasks not yet handed
        # over stay in pass order, and those in flight are all that a cut throws away.
        depth = self.workers * len(self.plan)
        while self._pool is not None and self._todo and len(self._running) < depth:
            task = heapq.heappop(self._todo)
            p, batch = task
            try:
                future = self._pool.submit(_timed_chunk, self._batches[batch], self._passes[p], self.fixed)
            except (BrokenProcessPool, RuntimeError, OSError) as err:  # the pool broke since the last task
                heapq.heappush(self._todo, task)
                self._workers_lost(err)
                return
            self._running[future] = task

    def _harvest(self) -> None:
        for future in [f for f in self._running if f.done()]:
            task = self._running.pop(future, None)
            if task is None:  # requeued by a failure seen earlier in this loop
                continue
            try:
                result = future.result()
            except Exception as err:  # a worker killed or out of memory: go on without workers
                heapq.heappush(self._todo, task)
                self._workers_lost(err)
                continue
            self._record(task, result)

    def _workers_lost(self, err: BaseException) -> None:
        log.warning(
            "post-processing search worker failed (%s); the search goes on in the training process",
            helper_failure(err) or one_line(err),
        )
        for task in self._running.values():
            heapq.heappush(self._todo, task)
        self._running.clear()
        self._kill()
        self.workers = 0

    def _kill(self) -> None:
        """Stop the workers now, whatever they are doing (a stuck one too)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.kill()

    def close(self) -> None:
        self._running.clear()
        self._kill()

    def __getstate__(self) -> dict:  # a process pool does not pickle
        return {**self.__dict__, "_pool": None, "_finalizer": None, "_running": {}}


def draw_detections(
    image: np.ndarray, gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], *, max_side: int = 512
) -> np.ndarray:
    """`image` (RGB uint8) shrunk to at most `max_side` pixels, ground truth in green and
    detections in red over it; polygons in the image's pixels."""
    import cv2

    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s < 1:
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    for polys, color in ((gt, (0, 200, 0)), (pred, (255, 0, 0))):
        pts = [np.round(np.asarray(p, np.float64) * s).astype(np.int32) for p in polys if len(p) >= 2]
        if pts:
            cv2.polylines(out, pts, True, color, 1, cv2.LINE_8)
    return out
