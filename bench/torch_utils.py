"""Small torch helpers shared by the models written in this project (imported lazily by them)."""

from __future__ import annotations

import contextlib



@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' "Loading weights" / "Writing model shards" progress bars while a model
    we manage is saved or loaded (several times per job: noise next to the grid's own bar)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def pick_device(preference: str = "auto"):
    """"auto" -> cuda when available, else cpu; or an explicit torch device string."""
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
