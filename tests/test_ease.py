"""EASE's in-place solve against the former np.linalg.inv code, and its memory check."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

import baselines.ease as ease
from bench import memory
from bench.errors import ConfigError, NotEnoughMemory

GIB = 2**30


def _x(n_users: int, n_items: int, seed: int) -> sp.csr_matrix:
    x = sp.random(n_users, n_items, density=0.05, format="csr", random_state=seed, dtype=np.float32)
    x.data[:] = 1.0
    return x


def _inv_b(x: sp.csr_matrix, l2: float) -> np.ndarray:
    """The former code: dense float64 Gram, np.linalg.inv, float64 B."""
    gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    return b


# odd and even sizes, several blocks of rows (BLOCK_BYTES is shrunk below) and one
@pytest.mark.parametrize("n_items", [1, 2, 7, 255, 300, 513])
@pytest.mark.parametrize("block_bytes", [4096, 2**28])
def test_in_place_solve_equals_np_linalg_inv(n_items, block_bytes, monkeypatch):
    monkeypatch.setattr(ease, "BLOCK_BYTES", block_bytes)
    x = _x(400, n_items, n_items)
    expected = _inv_b(x, 10.0)
    b64 = ease.solve_in_place(x, 10.0, np.dtype(np.float64))
    assert b64.dtype == np.float64 and np.abs(b64 - expected).max() <= 1e-8
    b = ease.ease_weights(x, 10.0)
    assert b.dtype == np.float32 and b.shape == (n_items, n_items)
    assert np.abs(b - expected).max() <= 1e-7  # float32: B's values are below 1 here
    b32 = ease.ease_weights(x, 10.0, np.dtype(np.float32))
    assert b32.dtype == np.float32 and np.abs(b32 - expected).max() <= 1e-5


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 101])
@pytest.mark.parametrize("block_bytes", [8, 2**28])
def test_float32_cast_in_place_is_exact(n, block_bytes, monkeypatch):
    monkeypatch.setattr(ease, "BLOCK_BYTES", block_bytes)
    a = np.random.default_rng(n).normal(size=(n, n))
    expected = a.astype(np.float32)
    buffer = a.__array_interface__["data"][0]
    out = ease._float32_in_place(a)
    assert out.dtype == np.float32 and out.shape == (n, n) and np.array_equal(out, expected)
    assert out.__array_interface__["data"][0] == a.__array_interface__["data"][0]  # no second matrix
    assert a.nbytes == 8 * ((n * n + 1) // 2)  # the second half was given back
    del buffer


def _split(n_items: int, n_train: int = 1000):
    def matrix(parts):
        raise AssertionError("the training matrix was built before the memory check")
    return SimpleNamespace(n_items=n_items, train=range(n_train), matrix=matrix)


def test_refused_before_anything_big_is_allocated(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 32 * GIB)
    monkeypatch.setattr(ease, "gram", lambda *a: pytest.fail("the Gram was built before the memory check"))
    with pytest.raises(NotEnoughMemory) as err:
        ease.EASE().fit(_split(104_000), ease.EASEConfig(), None)
    message = str(err.value)
    assert message.startswith("ease needs about 80.")  # 8 bytes x 104,000^2 = 80.6 GiB, + a block
    assert "(n_items=104,000); this machine has 32.0 GiB available" in message
    assert "--set ease.dtype=float32 (about 42." in message


def test_float32_halves_the_need_and_then_names_no_setting(monkeypatch):
    need64 = ease.memory_need(104_000, 10**6, "float64")
    need32 = ease.memory_need(104_000, 10**6, "float32")
    assert 0.5 < need32 / need64 < 0.53  # B (float32) and the scoring batches are the same in both
    monkeypatch.setattr(memory, "available_bytes", lambda: 32 * GIB)
    with pytest.raises(NotEnoughMemory, match="float32 is the least it takes"):
        ease.EASE().fit(_split(104_000), ease.EASEConfig(dtype="float32"), None)


def test_a_fitting_job_runs_and_scores(monkeypatch):
    x = _x(300, 50, 0)
    split = SimpleNamespace(n_items=50, train=range(x.nnz), matrix=lambda parts: x)
    model = ease.EASE()
    model.fit(split, ease.EASEConfig(l2=10.0), None)
    scores = model.score(np.arange(3), x[:3])
    assert scores.shape == (3, 50) and scores.dtype == np.float32
    assert np.allclose(scores, x[:3] @ _inv_b(x, 10.0), atol=1e-6)


def test_unknown_dtype_is_refused_before_the_grid():
    with pytest.raises(ConfigError, match="ease.dtype must be one of float64, float32, not 'float16'"):
        ease.EASE.check(ease.EASEConfig(dtype="float16"), "ease")
