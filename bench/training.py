"""Training-loop pieces shared by the models written in this project."""

from __future__ import annotations

from typing import Any, Callable


class EarlyStopping:
    """Tracks the best validation value, snapshots the state at each improvement, and says
    when `patience` epochs have passed without one. Higher values are better.

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
                            restore: Callable[[Any], None], desc: str) -> tuple[list[float], list[float], EarlyStopping]:
    """The loop every model written here shares: one training epoch, then `metric` on the
    validation split through the one evaluator (`bench.scoring.validate`), early stopping, and
    the best state restored at the end. Returns (train losses, valid values, the stopper)."""
    from bench.progress import note
    from bench.scoring import validate

    losses: list[float] = []
    values: list[float] = []
    stopper = EarlyStopping(patience, snapshot)
    bar = epoch_bar(epochs, desc)
    for epoch in bar:
        losses.append(train_epoch())
        value = validate(model, split, metric)  # NaN (no valid users) is never "better"
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
