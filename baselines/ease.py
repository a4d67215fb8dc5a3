"""`ease`: Embarrassingly Shallow Autoencoder (Steck, WWW 2019), closed form.

B = I - P diag(1 / diag(P)), P = (X^T X + l2 I)^-1, scores = X_u B. Dense in items: the fit
holds one n_items x n_items matrix of `dtype` (8 bytes a cell in float64, 4 in float32), which
becomes B (float32, 4 bytes a cell) in place:

  1. G = X^T X + l2 I, built in blocks of rows straight into the dense matrix;
  2. P = G^-1 in place: Cholesky (LAPACK potrf) then the inverse from it (potri), one triangle,
     copied into the other in blocks;
  3. B[i, j] = -P[i, j] / P[j, j], B[j, j] = 0, in place; a float64 B is then cast to float32
     in the first half of its own buffer, whose second half goes back to the allocator.

The peak is therefore one n_items^2 matrix: 8 (float64) or 4 (float32) bytes per n_items^2 plus
13-66 MB (a block of G's rows, copies of X), measured at 2,000 to 16,000 items, where the former
code (float32 and float64 copies of G, np.linalg.inv's copies, the float32 cast of B) peaked at
32 (docs/performance.md, "Memory of item-item models"). The fit checks its need against the
available memory before it allocates anything (`bench.memory`) and refuses, naming the need and
`--set ease.dtype=float32`, a job that would not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import memory
from bench.errors import BenchError, ConfigError
from bench.models import Model, ModelConfig
from bench.scoring import SCORE_BATCH

DTYPES = ("float64", "float32")
# Peak resident memory of `ease_weights` per n_items^2, on top of what the process held before;
# the measured excess (13-66 MB at 2,000 to 16,000 items: scripts/memory_factors.py,
# docs/performance.md) is within the BLOCK_BYTES added to it.
FIT_BYTES_PER_CELL = {"float64": 8.0, "float32": 4.0}
BLOCK_BYTES = 2**28  # the co-occurrences of one block of rows of G, and of one block of B's cast
# The training matrix as CSR in the harness (float32) and as the two float `dtype` copies the Gram
# product reads (X and X^T): bytes per training interaction, float64 (float32 is less).
DATA_BYTES_PER_INTERACTION = 3 * 12


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    l2: float = field(default=500.0, metadata={"help": "L2 regularisation lambda (Steck 2019 used 500 on ML-20M)"})
    dtype: str = field(default="float64", metadata={
        "help": "float type of the n_items x n_items solve: float64, or float32 (half the memory: "
                "4 instead of 8 bytes per n_items^2; B is float32 either way)"})


def memory_need(n_items: int, n_interactions: int, dtype: str, batch: int = SCORE_BATCH) -> float:
    """Bytes EASE needs at its peak: the fit's one dense matrix, or B (float32) while the harness
    scores a batch of users against it, whichever is larger, plus the training data."""
    fit = FIT_BYTES_PER_CELL[dtype] * n_items ** 2 + BLOCK_BYTES
    score = 4.0 * n_items ** 2 + memory.scoring_bytes(n_items, batch, model_bytes_per_cell=4)
    return max(fit, score) + DATA_BYTES_PER_INTERACTION * n_interactions


class EASE(Model):
    Config = EASEConfig

    @classmethod
    def check(cls, config: EASEConfig, name: str) -> None:
        if config.dtype not in DTYPES:
            raise ConfigError(f"{name}.dtype must be one of {', '.join(DTYPES)}, not {config.dtype!r}")

    def fit(self, split, config: EASEConfig, workdir: Path) -> None:
        self.check(config, "ease")
        n = split.n_items
        need = memory_need(n, len(split.train), config.dtype)
        if config.dtype == "float64":
            need32 = memory_need(n, len(split.train), "float32")
            fix = (f"Lower it with --set ease.dtype=float32 (about {memory.gib(need32)}), "
                   "or run it on a machine with more memory or on a dataset with fewer items")
        else:
            fix = "float32 is the least it takes: run it on a machine with more memory or on a dataset with fewer items"
        memory.require(need, "ease", f"its dense n_items x n_items matrix in {config.dtype}", n, fix)
        self.b = ease_weights(split.matrix(("train",)), config.l2, np.dtype(config.dtype))

    def score(self, users: np.ndarray, history) -> np.ndarray:
        return np.asarray(history @ self.b, dtype=np.float32)


def ease_weights(x, l2: float, dtype: np.dtype = np.dtype(np.float64)) -> np.ndarray:
    """(n_items, n_items) float32 B of EASE from x, the (n_users, n_items) sparse training matrix,
    solved in `dtype`, with one n_items^2 matrix of `dtype` at the peak (see the module docstring)."""
    b = solve_in_place(x, l2, dtype)
    return b if b.dtype == np.float32 else _float32_in_place(b)


def solve_in_place(x, l2: float, dtype: np.dtype) -> np.ndarray:
    """(n_items, n_items) B of `dtype`, built in one dense matrix: X^T X + l2 I, its inverse P in
    place (Cholesky), then B[i, j] = -P[i, j] / P[j, j] with a zero diagonal, in place."""
    from scipy.linalg import lapack

    n = x.shape[1]
    g = gram(x, dtype)
    g[np.diag_indices(n)] += l2
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (g,))
    # g is symmetric, so g.T (Fortran-ordered, the layout LAPACK overwrites without a copy) is the
    # same matrix; LAPACK's upper triangle of g.T is g's lower one. Upper, not lower: strtri 'L'
    # (inside spotri) of the OpenBLAS 0.3.21 bundled with scipy 1.12 crashes (SIGSEGV) on some
    # sizes (255, 511, 999, 1001, 1023, 2501) on the dev machine's CPU (Prescott kernels); 'U' ran
    # clean on every size from 1 to 299 and 60 sizes up to 2,600, in float32 and float64.
    factor, info = potrf(g.T, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise BenchError(f"ease: X^T X + l2 I is not positive definite (LAPACK potrf info {info}); "
                         "raise --set ease.l2")
    inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise BenchError(f"ease: inverting X^T X + l2 I failed (LAPACK potri info {info}); raise --set ease.l2")
    if not np.shares_memory(inverse, g):  # a copy would double the memory the check allowed for
        raise RuntimeError("LAPACK potri did not work in place")
    del factor, inverse
    _copy_lower_to_upper(g)  # g = P
    diagonal = g.diagonal().copy()
    np.divide(g, -diagonal, out=g)  # B[i, j] = -P[i, j] / P[j, j]
    g[np.diag_indices(n)] = 0.0
    return g


def gram(x, dtype: np.dtype) -> np.ndarray:
    """(n_items, n_items) dense X^T X of `dtype`, built in blocks of rows so that only one block's
    co-occurrences (at most BLOCK_BYTES) exist as a sparse matrix besides the dense result."""
    n = x.shape[1]
    xt = x.T.tocsr().astype(dtype)  # (n_items, n_users)
    x = x.tocsr().astype(dtype)
    g = np.zeros((n, n), dtype=dtype)
    rows = max(1, BLOCK_BYTES // ((np.dtype(dtype).itemsize + 4) * n))
    for r0 in range(0, n, rows):
        (xt[r0:r0 + rows] @ x).toarray(out=g[r0:r0 + rows])
    return g


def _copy_lower_to_upper(a: np.ndarray) -> None:
    """Make the C-ordered square `a` symmetric from its lower triangle, in place, in blocks of rows."""
    n = a.shape[0]
    rows = 512  # a slab a[r1:, r0:r1] is read as rows of 512 contiguous values
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        a[r0:r1, r1:] = a[r1:, r0:r1].T
        for i in range(r0, r1 - 1):  # the diagonal block, row by row
            a[i, i + 1:r1] = a[i + 1:r1, i]


def _float32_in_place(a: np.ndarray) -> np.ndarray:
    """The values of `a` ((n, n) float64, C-ordered, owning its buffer, no views of it alive) as an
    (n, n) float32 array in the first half of the same buffer; the second half is given back
    (`ndarray.resize`, a realloc that shrinks in place), so the cast needs no second matrix.

    Float64 rows [r0, r1) go to float32 bytes [4 r0 n, 4 r1 n): below their own bytes
    [8 r0 n, 8 r1 n), above the rows already cast, and clear of their own bytes when r1 <= 2 r0,
    so blocks grow from one row (which numpy copies through a buffer) by at most doubling. The
    values equal a.astype(np.float32) exactly.
    """
    n = a.shape[0]
    rows = a.reshape(n * n).view(np.float32).reshape(2 * n, n)  # float32 row r: bytes [4 r n, 4 (r + 1) n)
    r0, most = 0, max(1, BLOCK_BYTES // (8 * n))
    while r0 < n:
        r1 = min(n, r0 + max(1, min(r0, most)))
        rows[r0:r1] = a[r0:r1]
        r0 = r1
    del rows
    # refcheck=False: the caller's own name for `a` is the only other reference, and no view exists
    a.resize(((n * n + 1) // 2,), refcheck=False)
    return a.view(np.float32)[:n * n].reshape(n, n)
