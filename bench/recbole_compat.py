"""Everything this project does to make RecBole 1.2.1 behave, in one place.

- RecBole's ``Config`` parses ``sys.argv`` (``Config._load_cmd_line``, which ``eval``s the
  values): under pytest or our own CLI it would read our flags. ``make_config`` blanks
  argv while building it.
- RecBole writes ``./log`` and ``./log_tensorboard`` in the working directory and names
  checkpoints by the second; ``make_config`` points every path into the run's own folder.
- ``quiet_recbole`` hides RecBole's own FutureWarnings while its code runs.
- numpy < 2, scipy < 1.13 and pandas < 3 are handled by pins in pyproject.toml
  (docs/dependencies.md items 1, 2 and 4), not here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def blank_argv() -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0] if saved else "bench"]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """RecBole's logger and tensorboard writer use relative paths: run them inside `path`."""
    path.mkdir(parents=True, exist_ok=True)
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


@contextlib.contextmanager
def quiet_recbole() -> Iterator[None]:
    """Silence the deprecation warnings RecBole 1.2.1 triggers in pandas 2.x and torch 2.x
    (fillna(inplace=True) on a copy, Series.agg(len), torch.cuda.amp.GradScaler), only while
    RecBole code runs. They are known upstream and harmless with our pins (pandas<3)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def make_config(model: str, dataset: str, data_path: str, config_dict: dict, workdir: Path):
    """A RecBole Config built only from `config_dict` (never from argv or cwd files)."""
    from recbole.config import Config

    values = {
        "data_path": str(data_path),
        "checkpoint_dir": str(Path(workdir) / "checkpoints"),
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        **config_dict,
    }
    with blank_argv(), working_directory(Path(workdir)):
        return Config(model=model, dataset=dataset, config_dict=values)
