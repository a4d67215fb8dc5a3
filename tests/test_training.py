"""The shared training loop (bench.training): validation every N epochs, patience in validations."""

from __future__ import annotations

import pytest

import bench.scoring
from bench.training import fit_with_early_stopping


def run(monkeypatch, values, *, epochs, patience, valid_every):
    """Fit a fake model whose validations return `values` in turn; record what happened."""
    asked = []
    epochs_trained = []

    def validate(model, split, metric):
        asked.append(len(epochs_trained))  # after how many training epochs
        return values[len(asked) - 1]

    monkeypatch.setattr(bench.scoring, "validate", validate)
    restored = []
    losses, valid, stopper = fit_with_early_stopping(
        None, None, epochs=epochs, patience=patience, metric="ndcg@20",
        train_epoch=lambda: epochs_trained.append(1) or 0.5, snapshot=lambda: f"after {len(epochs_trained)}",
        restore=restored.append, desc="toy", valid_every=valid_every)
    return asked, losses, valid, stopper, restored


def test_every_epoch_by_default(monkeypatch):
    asked, losses, valid, stopper, restored = run(monkeypatch, [0.1, 0.3, 0.2, 0.2], epochs=10, patience=2,
                                                  valid_every=1)
    assert asked == [1, 2, 3, 4] and len(losses) == 4 and valid == [0.1, 0.3, 0.2, 0.2]
    assert stopper.best_epoch == 1 and restored == ["after 2"]
    assert len(stopper.seconds["train"]) == 4 and len(stopper.seconds["valid"]) == 4


def test_valid_every_validates_every_n_epochs_and_counts_validations(monkeypatch):
    # validations after epochs 3, 6, 9, 12; patience 2 = two validations without gain
    asked, losses, valid, stopper, restored = run(monkeypatch, [0.1, 0.3, 0.2, 0.25, 0.9], epochs=20, patience=2,
                                                  valid_every=3)
    assert asked == [3, 6, 9, 12] and len(losses) == 12 and valid == [0.1, 0.3, 0.2, 0.25]
    assert stopper.best_epoch == 5 and stopper.best == 0.3 and restored == ["after 6"]  # epoch index 5 = 6th
    assert len(stopper.seconds["train"]) == 12 and len(stopper.seconds["valid"]) == 4


def test_valid_every_always_validates_the_last_epoch(monkeypatch):
    asked, losses, _, _, restored = run(monkeypatch, [0.1, 0.2, 0.3], epochs=7, patience=5, valid_every=3)
    assert asked == [3, 6, 7] and len(losses) == 7 and restored == ["after 7"]


def test_valid_every_must_be_positive(monkeypatch):
    with pytest.raises(ValueError, match="valid_every"):
        run(monkeypatch, [0.1], epochs=3, patience=1, valid_every=0)


def test_validation_share_script_measures_a_model(tmp_path):
    # scripts/validation_share.py (docs/performance.md): one row per model, validations counted.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "validation_share.py"), "--root", str(tmp_path),
                          "--models", "md-cvae", "--epochs", "2", "--set", "md-cvae.content_pretrain_epochs=0"],
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    cells = [c.strip() for c in out.stdout.strip().splitlines()[-1].strip("|").split("|")]
    assert cells[:3] == ["md-cvae", "2", "2"] and cells[5].endswith("%")
