"""Progress bars for long work, in one place (tqdm).

Bars are drawn on an interactive terminal only (tqdm's ``disable=None``): never in a log file,
a pipe, CI or the tests. ``bench run --no-progress`` turns them off; the environment variable
``BENCH_PROGRESS=1`` draws them anyway (e.g. ``bench run 2>&1 | tee run.log``), ``=0`` never.
Parallel workers draw none (their bars would overwrite each other and the grid's).

    for epoch in progress.bar(range(epochs), desc="sasrec", unit="epoch"):
        loss = train_one_epoch()
        progress.note(loss=loss, **{"ndcg@20": value})   # shown beside the innermost open bar

The grid's bar (`GridProgress`) estimates the time left from the models' cost hints (their
seconds measured on a reference machine, ``bench/configs/costs.yaml``): the remaining jobs' hints at the pace of the jobs that ran so far,
instead of the mean time of a finished job (a 4-hour LLM job then no longer looks like a
2-second popularity job).
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Callable, Hashable, Iterable

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")
_forced: bool | None = None  # set by the CLI (--no-progress) and by parallel workers
_open: list[weakref.ref] = []  # bars made by `bar`, innermost last (for `note`)


def set_enabled(flag: bool | None) -> None:
    """True / False: always / never draw bars in this process; None: decide by the terminal."""
    global _forced
    _forced = flag


def enabled() -> bool:
    if _forced is not None:
        return _forced
    env = os.environ.get("BENCH_PROGRESS", "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
        leave: bool = False, disable: bool = False, **kwargs):
    """A tqdm bar, drawn only when `enabled()` and not `disable` (e.g. too little work to show);
    the nested bars of a job stack below the grid's and vanish when done (`leave`)."""
    from tqdm.auto import tqdm

    made = tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable or not enabled(),
                dynamic_ncols=True, **kwargs)
    _open[:] = [ref for ref in _open if _is_open(ref())]
    _open.append(weakref.ref(made))
    return made


def _is_open(b) -> bool:
    return b is not None and not getattr(b, "disable", True)  # tqdm.close() sets disable


def note(**values) -> None:
    """Show `values` (a loss, a validation metric) beside the innermost open bar, with what was
    noted there before (a later value of the same name replaces it); no-op without a bar."""
    for ref in reversed(_open):
        b = ref()
        if _is_open(b):
            notes = getattr(b, "_bench_notes", {})
            notes.update((k, _short(v)) for k, v in values.items())
            b._bench_notes = notes
            b.set_postfix(notes, refresh=True)
            return


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_seconds(seconds: float | None) -> str:
    """1:02:03, 4:05, or ? when unknown."""
    if seconds is None:
        return "?"
    s = round(max(seconds, 0.0))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class WeightedETA:
    """Time left in a grid whose jobs cost differently.

    `weights`: the cost hint of every job still to do (any positive unit). A job that ran (or
    failed) tells the pace: seconds of wall time per unit of hint, measured since `start`. The
    time left is the remaining jobs' hints at that pace, minus the time already spent on the
    current jobs since the last one finished. A job served from the result cache (or not run)
    takes no time and is left out of both sides.
    """

    def __init__(self, weights: dict[Hashable, float], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start = clock()
        self.remaining = {k: max(float(w), 1e-3) for k, w in weights.items()}
        self.done_weight = 0.0
        self.last_finish: float | None = None

    def finished(self, key: Hashable, counted: bool = True) -> None:
        """Job `key` ended; `counted` = it did real work (ran or failed), not skipped."""
        weight = self.remaining.pop(key, 0.0)
        if counted:
            self.done_weight += weight
            self.last_finish = self.clock()
        elif self.last_finish is None:
            self.start = self.clock()  # time spent skipping cached jobs is not work

    def eta(self) -> float | None:
        """Seconds left; None before the first job finished; 0 when nothing remains."""
        if not self.remaining:
            return 0.0
        if self.last_finish is None or self.done_weight <= 0:
            return None
        pace = (self.last_finish - self.start) / self.done_weight
        return max(pace * sum(self.remaining.values()) - (self.clock() - self.last_finish), 0.0)


class GridProgress:
    """The grid's bar: jobs done / all, elapsed, the cost-weighted ETA and the running job."""

    def __init__(self, weights: dict[Hashable, float], *, total: int, done: int = 0, show: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.eta = WeightedETA(weights, clock)
        self.bar = bar(total=total, initial=done, desc="jobs", unit="job", leave=True,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}{postfix}]") \
            if show else None
        self._current = ""

    def text(self) -> str:
        return f"ETA {format_seconds(self.eta.eta())} (by cost hints)" + (f", {self._current}" if self._current else "")

    def started(self, label: str) -> None:
        self._current = label
        self._refresh()

    def finished(self, key: Hashable, status: str, label: str = "") -> None:
        self.eta.finished(key, counted=status in ("ran", "failed"))
        if label and self._current == label:
            self._current = ""
        if self.bar is not None:
            self.bar.set_postfix_str(self.text(), refresh=False)
            self.bar.update()

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.text(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
