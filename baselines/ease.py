"""`ease`: Embarrassingly Shallow Autoencoder (Steck, WWW 2019), closed form.

B = I - P diag(1 / diag(P)), P = (X^T X + l2 I)^-1, scores = X_u B. Dense in items: memory
is n_items^2 floats, so it refuses datasets above `max_items` with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.models import Model, ModelConfig


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    l2: float = field(default=500.0, metadata={"help": "L2 regularisation lambda (Steck 2019 used 500 on ML-20M)"})
    max_items: int = field(default=40_000, metadata={"help": "refuse larger item sets (dense n^2 memory)"})


class EASE(Model):
    Config = EASEConfig

    def fit(self, split, config: EASEConfig, workdir: Path) -> None:
        if split.n_items > config.max_items:
            raise BenchError(f"ease needs a dense {split.n_items}x{split.n_items} matrix; raise --set "
                             f"ease.max_items={split.n_items} if you have ~{8 * split.n_items ** 2 / 2**30:.0f} GiB")
        x = split.matrix(("train",))
        gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
        gram[np.diag_indices_from(gram)] += config.l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        self.b = b.astype(np.float32)

    def score(self, users: np.ndarray, history) -> np.ndarray:
        return np.asarray(history @ self.b, dtype=np.float32)
