"""Everything this project does to make RecBole 1.2.1 behave, in one place.

- RecBole's ``Config`` parses ``sys.argv`` (``Config._load_cmd_line``, which ``eval``s the
  values): under pytest or our own CLI it would read our flags. ``make_config`` blanks
  argv while building it.
- RecBole's ``Config._convert_config_dict`` calls ``eval()`` on every string value of
  ``config_dict`` (a workaround for its HyperTuning, configurator.py), so a setting such as
  ``note: "__import__('os').system(...)"`` would run code. ``make_config`` converts strings
  itself with ``ast.literal_eval`` (the same literals, no code) and hands RecBole each string
  as its own literal, which its ``eval`` turns back into the same string. Besides, a run's
  ``params`` must be plain data with plain-text strings (``check_plain``, when the run is
  planned: KD_DAGFM ``eval``s its ``teacher`` setting again), and each key a setting RecBole
  knows for the model, with a value of its type (``check_params``, before the job trains:
  RecBole ignores a misspelt key silently).
- RecBole names checkpoints by the second and resolves its paths against the working
  directory: ``checkpoint_dir`` (default ``saved``; its dataset and dataloader caches live
  there too), ``data_path``, and the tensorboard folder ``log_tensorboard``, which is not a
  setting (``recbole.utils.get_tensorboard``). ``make_config`` makes the first two absolute,
  under the run's own folder; the trainers' tensorboard writer is replaced once, process-wide
  (``_job_tensorboard``), by one that writes under the folder of the job running in the
  calling thread (``recbole_job``) and writes nothing outside a job. RecBole's ``./log`` is
  written only by ``init_logger``, which bench never calls. So nothing changes the working
  directory (``os.chdir`` is process-wide: unsafe with threads, e.g. Dask workers).
- RecBole changes process-wide state: ``Config`` sets ``CUDA_VISIBLE_DEVICES`` (to "" for a
  CPU run, which would hide the GPUs from every later job of the process), and ``init_seed``
  makes cuDNN deterministic. ``make_config`` restores the variable as soon as the Config is
  built, and ``recbole_job`` restores the cuDNN flags when the last RecBole job of the process
  ends.
- ``quiet_recbole`` hides RecBole's own FutureWarnings while its code runs.
- numpy < 2, scipy < 1.13 and pandas < 3 are handled by pins in pyproject.toml
  (docs/dependencies.md items 1, 2 and 4), not here.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import difflib
import functools
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError


@contextlib.contextmanager
def blank_argv() -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0] if saved else "bench"]
    try:
        yield
    finally:
        sys.argv = saved


# --- one RecBole job's effect on the process ----------------------------------------------

_JOB_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("recbole_job_folder", default=None)
_STATE_LOCK = threading.Lock()  # guards CUDA_VISIBLE_DEVICES while a Config is built, and the counter below
_jobs_running = 0
_cudnn_before: tuple[bool, bool] | None = None


@contextlib.contextmanager
def recbole_job(workdir: Path) -> Iterator[None]:
    """Run one RecBole job (model, dataset, trainer) with `workdir` as its folder.

    Its tensorboard files go to ``workdir/log_tensorboard`` (never to the working directory), and
    the cuDNN flags RecBole's ``init_seed`` sets (deterministic, no benchmark) hold while it
    runs and are restored when the last RecBole job of the process ends (jobs in threads
    overlap: the flags are process-wide).
    """
    import torch

    global _jobs_running, _cudnn_before
    with _STATE_LOCK:
        if _jobs_running == 0:
            _cudnn_before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        _jobs_running += 1
    token = _JOB_FOLDER.set(Path(workdir).resolve())
    try:
        yield
    finally:
        _JOB_FOLDER.reset(token)
        with _STATE_LOCK:
            _jobs_running -= 1
            if _jobs_running == 0 and _cudnn_before is not None:
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = _cudnn_before


class _NoTensorboard:
    """A SummaryWriter that writes nothing (RecBole used outside `recbole_job`)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _job_tensorboard(logger):
    """Stands in for ``recbole.utils.get_tensorboard``, which writes to ``./log_tensorboard``."""
    folder = _JOB_FOLDER.get()
    if folder is None:
        return _NoTensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder / "log_tensorboard"))


def _install_tensorboard_shim() -> None:
    import recbole.trainer.trainer as trainer_module

    trainer_module.get_tensorboard = _job_tensorboard  # every trainer class looks it up there


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
    import torch
    from recbole.config import Config

    _install_tensorboard_shim()
    values = {
        "data_path": str(Path(data_path).resolve()),
        # Its dataset and dataloader caches (dataset_save_path, dataloaders_save_path) default
        # to files in this folder too; save_dataset and save_dataloaders keep them unwritten.
        "checkpoint_dir": str(Path(workdir).resolve() / "checkpoints"),
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        **config_dict,
    }
    values = {key: _no_code(value) for key, value in values.items()}
    with _STATE_LOCK, blank_argv():
        # Config._init_device sets CUDA_VISIBLE_DEVICES, then asks torch for the devices. The
        # first such question fixes the devices the process sees, for good: ask it first, under
        # the user's setting, and restore the variable afterwards.
        torch.cuda.is_available()
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            return Config(model=model, dataset=dataset, config_dict=values)
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _no_code(value: Any) -> Any:
    """What RecBole's ``_convert_config_dict`` makes of `value`, without running code.

    RecBole ``eval``s a string and keeps the result when it is plain data; "true"/"false"
    become booleans and anything else stays a string. Here ``ast.literal_eval`` does the
    conversion, and a string that stays a string is passed as its own literal (``repr``):
    RecBole's ``eval`` of it gives back exactly that string.
    """
    if not isinstance(value, str):
        return value
    try:
        converted = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        converted = {"true": True, "false": False}.get(value.lower(), value)
    if converted is not None and not isinstance(converted, (str, int, float, list, tuple, dict, bool, Enum)):
        converted = value
    return repr(converted) if isinstance(converted, str) else converted


# --- checking the user's RecBole settings (RecBoleConfig.params) ---------------------------

_PLAIN_TEXT = re.compile(r"^[\w@.,:+\-/ ]*$")
_PLAIN_TEXT_HELP = "letters, digits, spaces and _ @ . , : + - / only"


def check_plain(params: Any, where: str = "params") -> None:
    """`params` is a mapping of plain data (numbers, booleans, plain-text strings, lists, dicts)."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where} must be a mapping of RecBole settings, e.g. {{n_layers: 2}}, not {params!r}")
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{where}: {key!r} is not a RecBole setting name")
        _check_plain_value(value, f"{where}.{key}")


def _check_plain_value(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _check_plain_value(key, where)
            _check_plain_value(inner, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for inner in value:
            _check_plain_value(inner, where)
    elif isinstance(value, str):
        if not _PLAIN_TEXT.match(value):
            raise ConfigError(f"{where}: {value!r} is not plain text; RecBole evaluates string settings as "
                              f"Python, so bench accepts {_PLAIN_TEXT_HELP}")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise ConfigError(f"{where}: {value!r} is a {type(value).__name__}; RecBole settings are numbers, "
                          "booleans, strings, lists or mappings")


def check_params(model: str, params: dict, where: str = "params") -> None:
    """Every key of `params` is a setting RecBole knows for `model` (its property files), with
    a value of the type of RecBole's default (a number for a number, a list for a list, ...)."""
    check_plain(params, where)
    defaults = known_settings(model)
    for key, value in params.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: RecBole has no setting {key!r} for {model}.{hint} Known settings are in "
                              f"recbole/properties/model/{model}.yaml and recbole/properties/overall.yaml")
        if not _same_kind(value, defaults[key]):
            raise ConfigError(f"{where}.{key}: {value!r} is not a {_kind(defaults[key])} "
                              f"(RecBole's default is {defaults[key]!r})")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "mapping"}.get(type(value), "value")


def _same_kind(value: Any, default: Any) -> bool:
    """None on either side is accepted: RecBole uses None for "off" and for "no default"."""
    return value is None or default is None or _kind(value) == _kind(default)


@functools.cache
def known_settings(model: str) -> dict[str, Any]:
    """Setting -> default for `model`: RecBole's overall, dataset, quick-start and model files."""
    properties = _properties_dir()
    files = [properties / "overall.yaml", properties / "dataset" / "sample.yaml",
             *sorted((properties / "quick_start_config").glob("*.yaml")), properties / "model" / f"{model}.yaml"]
    known: dict[str, Any] = {}
    for path in files:
        if path.exists():
            known.update(yaml.load(path.read_text(encoding="utf-8"), Loader=_RecBoleYamlLoader) or {})
    return known


def _properties_dir() -> Path:
    # Found without importing recbole (which imports torch): settings are checked while planning.
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise ConfigError("RecBole is not installed: pip install recbole==1.2.1")
    return Path(spec.origin).parent / "properties"


class _RecBoleYamlLoader(yaml.SafeLoader):
    """YAML as RecBole reads its property files: also ``1e-3`` is a float (Config._build_yaml_loader)."""


_RecBoleYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."))
