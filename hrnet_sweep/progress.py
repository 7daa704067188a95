"""Progress that reads well both in a terminal and in a log file.

On a terminal: tqdm's bar (Lightning's, during training). Anywhere else (`make demo >
log`, a sweep run's `output.log`, an agent log) a bar writes a carriage-return update per
step, hundreds of them per epoch; there a plain line is printed each time a further
`every` percent is done instead (`SparseLines`). `track` wraps an iterable,
`lightning_progress` picks the Trainer's bar or the `SparseProgress` callback.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["SparseLines", "is_terminal", "lightning_progress", "sparse_progress", "track"]

T = TypeVar("T")
EVERY_PERCENT = 10.0
EPOCH_SUFFIX = "_epoch"  # Lightning's name for a value logged per step and averaged per epoch
UNKNOWN_TOTAL_EVERY = 100  # steps between lines when the total is not known


def is_terminal(stream: IO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class SparseLines:
    """`desc: 30% (300/1000 img, 12 s, 25.0 img/s)`, once per further `every` percent.

    At most 100 / `every` lines (plus a last one when `close` finds the end not yet
    printed), no carriage return. Without a known total, a line every 100 steps.
    """

    def __init__(
        self,
        total: int | float | None,
        *,
        desc: str = "",
        unit: str = "it",
        stream: IO | None = None,
        every: float = EVERY_PERCENT,
    ):
        self.total = total if total and math.isfinite(total) else None
        self.desc, self.unit, self.every = desc, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.n, self.printed, self.start = 0, 0, time.monotonic()
        self.next_percent = every

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total is None:
            if self.n - self.printed >= UNKNOWN_TOTAL_EVERY:
                self._line()
            return
        percent = 100.0 * self.n / self.total
        if percent + 1e-9 >= self.next_percent:
            self._line()
            self.next_percent = (math.floor(percent / self.every + 1e-9) + 1) * self.every

    def close(self, note: str = "") -> None:
        """A last line when the count moved since the last one; `note` (e.g. the epoch's
        metrics) on it, or on a line of its own."""
        if self.n != self.printed:
            self._line(note)
        elif note:
            print(f"{self.desc}: {note}" if self.desc else note, file=self.stream, flush=True)

    def _line(self, note: str = "") -> None:
        elapsed = time.monotonic() - self.start
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        done = f"{100.0 * self.n / self.total:3.0f}% ({self.n}/{self.total}" if self.total else f"({self.n}"
        head = f"{self.desc}: " if self.desc else ""
        tail = f" {note}" if note else ""
        print(f"{head}{done} {self.unit}, {elapsed:.0f} s{rate}){tail}", file=self.stream, flush=True)
        self.printed = self.n


def track(
    iterable: Iterable[T],
    *,
    desc: str = "",
    unit: str = "it",
    total: int | None = None,
    stream: IO | None = None,
    every: float = EVERY_PERCENT,
    enabled: bool = True,
) -> Iterator[T]:
    """`iterable`, with tqdm's bar when `stream` (default stderr) is a terminal, else
    `SparseLines`; nothing at all unless `enabled`."""
    if not enabled:
        yield from iterable
        return
    stream = stream if stream is not None else sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if is_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, unit=unit, total=total, file=stream)
        return
    lines = SparseLines(total, desc=desc, unit=unit, stream=stream, every=every)
    try:
        for item in iterable:
            yield item
            lines.update()
    finally:
        lines.close()


# ----------------------------------------------------------------------------- Lightning


def lightning_progress(enabled: bool, stream: IO | None = None) -> tuple[bool, list]:
    """(`Trainer(enable_progress_bar=...)`, extra callbacks): Lightning's bar when
    `stream` (default stdout, where Lightning draws it) is a terminal, else
    `SparseProgress` lines; neither unless `enabled`."""
    stream = stream if stream is not None else sys.stdout
    if not enabled:
        return False, []
    if is_terminal(stream):
        return True, []
    return False, [sparse_progress(stream)]


def sparse_progress(stream: IO | None = None, every: float = EVERY_PERCENT) -> Any:
    """A Lightning callback printing `SparseLines` for each training epoch and validation."""
    return _sparse_progress_class()(stream, every)


@functools.lru_cache(maxsize=1)
def _sparse_progress_class() -> type:
    import pytorch_lightning as pl  # here, so light commands never import Lightning

    class SparseProgress(pl.Callback):
        """Training and validation progress as a few plain lines (rank zero only)."""

        def __init__(self, stream: IO | None, every: float):
            self.stream, self.every = stream, every
            self.lines: dict[str, SparseLines] = {}  # validation runs inside the training epoch

        def _start(self, trainer: Any, stage: str, total: Any, desc: str) -> None:
            if trainer.is_global_zero:
                total = sum(total) if isinstance(total, (list, tuple)) else total
                self.lines[stage] = SparseLines(total, desc=desc, unit="batch", stream=self.stream, every=self.every)

        def _step(self, stage: str) -> None:
            if stage in self.lines:
                self.lines[stage].update()

        def _end(self, trainer: Any, stage: str, prefix: str) -> None:
            lines = self.lines.pop(stage, None)
            if lines is not None:
                metrics = {
                    k: float(v)
                    for k, v in trainer.callback_metrics.items()
                    if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1
                }
                # a value logged per step and per epoch: the epoch's mean (`<name>_epoch`), not
                # the last batch's
                means = {k.removesuffix(EPOCH_SUFFIX): v for k, v in metrics.items() if k.endswith(EPOCH_SUFFIX)}
                if means:
                    metrics = {k: v for k, v in {**metrics, **means}.items() if not k.endswith(EPOCH_SUFFIX)}
                note = " ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
                lines.close(f"{note} (epoch mean)" if means and note else note)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._start(trainer, "train", trainer.num_training_batches, f"epoch {trainer.current_epoch}")

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            self._step("train")

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._end(trainer, "train", "train")

        def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self._start(trainer, "val", trainer.num_val_batches, f"epoch {trainer.current_epoch} validation")

        def on_validation_batch_end(self, trainer: Any, *args: Any) -> None:
            self._step("val")

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:  # the epoch's metrics are in by now
            self._end(trainer, "val", "val")

    return SparseProgress
