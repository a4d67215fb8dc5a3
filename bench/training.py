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
