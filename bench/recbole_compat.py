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
- RecBole writes ``./log`` and ``./log_tensorboard`` in the working directory and names
  checkpoints by the second; ``make_config`` points every path into the run's own folder.
- ``quiet_recbole`` hides RecBole's own FutureWarnings while its code runs.
- numpy < 2, scipy < 1.13 and pandas < 3 are handled by pins in pyproject.toml
  (docs/dependencies.md items 1, 2 and 4), not here.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import importlib.util
import os
import re
import sys
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
    values = {key: _no_code(value) for key, value in values.items()}
    with blank_argv(), working_directory(Path(workdir)):
        return Config(model=model, dataset=dataset, config_dict=values)


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
