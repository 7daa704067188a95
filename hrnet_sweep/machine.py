"""What this machine can run: every worker and process count a user sets (data workers,
the post-processing search's processes, folds trained at once, scoring processes) is
bounded here by the cores this process may use and by the work there is, with a warning
that names the setting when it is capped. One rule, so no setting oversubscribes a
machine that another setting already fills.
"""

from __future__ import annotations

import logging
import os

__all__ = ["cap_count", "usable_cores"]

log = logging.getLogger("hrnet_sweep")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else `os.cpu_count`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cap_count(value: int, what: str, *, work: int | None = None, work_name: str = "", minimum: int = 0) -> int:
    """`value` bounded by the usable cores and by `work` (the items there are to share
    out, e.g. folds or batches), never below `minimum`; a warning names `what`, the value
    and the bound when it is capped.

    Args:
        value: the count asked for (`data.num_workers=16`, `--cpu-jobs 8`).
        what: how the user spelled the setting, for the warning.
        work: the number of items to share out, when it is known.
        work_name: what those items are, in words ("folds", "batches").
        minimum: the smallest count that keeps the setting's meaning (0 for "in this
            process", 1 for "at least one process").
    """
    cores = usable_cores()
    bound, why = cores, f"{cores} usable CPU core(s)"
    if work is not None and work < bound:
        bound, why = max(work, minimum), f"{work} {work_name or 'items'} to share out"
    bound = max(bound, minimum)
    if value > bound:
        log.warning("%s=%d: capped at %d (%s)", what, value, bound, why)
        return bound
    return value
