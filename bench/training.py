"""Training-loop pieces shared by the models written in this project."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class EarlyStopping:
    """Tracks the best validation value, snapshots the state at each improvement, and says
    when `patience` validations (epochs, when every epoch is validated) have passed without
    one. Higher values are better.

        stopper = EarlyStopping(config.patience, snapshot=lambda: clone_state(net))
        for epoch in range(config.epochs):
            train_one_epoch()
            if stopper.update(epoch, validate(model, split, config.valid_metric)):
                break
        net.load_state_dict(stopper.best_state)
    """

    def __init__(self, patience: int, snapshot: Callable[[], Any]):
        self.patience = patience
        self.snapshot = snapshot
        self.best = float("-inf")
        self.best_epoch = -1
        self.best_state: Any = None
        self.since = 0
        self.seconds: dict[str, list[float]] = {}  # filled by fit_with_early_stopping

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch `epoch`'s value; True when training should stop."""
        if value > self.best:
            self.best, self.best_epoch, self.since = value, epoch, 0
            self.best_state = self.snapshot()
            return False
        self.since += 1
        return self.since >= self.patience


def clone_state(module) -> dict:
    """A detached copy of a torch module's state dict (kept in memory, never pickled)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit_with_early_stopping(model, split, *, epochs: int, patience: int, metric: str,
                            train_epoch: Callable[[], float], snapshot: Callable[[], Any],
                            restore: Callable[[Any], None], desc: str,
                            valid_every: int = 1) -> tuple[list[float], list[float], EarlyStopping]:
    """The loop every model written here shares: one training epoch, then `metric` on the
    validation split through the one evaluator (`bench.scoring.validate`, which computes that
    metric alone), early stopping, and the best state restored at the end.

    valid_every: validate after every this many epochs (and after the last one); `patience`
    then counts validations, not epochs. For models whose validation costs more than their
    training epoch (docs/performance.md).

    Returns (train losses, one per epoch; valid values, one per validation; the stopper, whose
    best_epoch is an epoch index and whose `seconds` holds the wall seconds of each training
    epoch and each validation: {"train": [...], "valid": [...]}).
    """
    from bench.progress import note
    from bench.scoring import validate

    if int(valid_every) < 1:
        raise ValueError(f"valid_every must be a positive number of epochs, not {valid_every}")
    losses: list[float] = []
    values: list[float] = []
    stopper = EarlyStopping(patience, snapshot)
    stopper.seconds = {"train": [], "valid": []}
    bar = epoch_bar(epochs, desc)
    for epoch in bar:
        start = time.perf_counter()
        losses.append(train_epoch())
        stopper.seconds["train"].append(time.perf_counter() - start)
        if (epoch + 1) % valid_every and epoch + 1 < epochs:
            note(loss=losses[-1])
            continue
        start = time.perf_counter()
        value = validate(model, split, metric)  # NaN (no valid users) is never "better"
        stopper.seconds["valid"].append(time.perf_counter() - start)
        values.append(value)
        note(loss=losses[-1], **{metric: value})
        if stopper.update(epoch, value):
            break
    if stopper.best_state is not None:
        restore(stopper.best_state)
    return losses, values, stopper


def epoch_bar(epochs: int, desc: str):
    """range(epochs) with a progress bar on an interactive terminal (none in logs, CI or workers);
    `bench.progress.note(loss=..., ...)` shows an epoch's values beside it."""
    from bench import progress

    return progress.bar(range(epochs), desc=desc, unit="epoch")
