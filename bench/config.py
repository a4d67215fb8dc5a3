"""Configuration: frozen dataclasses, resolved as defaults < YAML < ``--set key=value``.

For a model the layers are: its ``Config`` dataclass defaults (from its paper), then
``bench/configs/models/<model>.yaml`` (section ``default``, then the section named by the
preset's ``model_settings``, e.g. ``smoke`` or ``paper``), then the preset's
``models_config.<model>``, then ``--set <model>.<key>=value``. Split settings are
overridden with ``--set split.<key>=value``. YAML files hold data only (safe_load).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError, UnknownNameError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_PRESET = "cpu"  # `bench run` with no arguments: every model on the embedded data, CPU-sized


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ("all",)
    seeds: tuple[int, ...] = (0,)
    splits: tuple[dict, ...] = ({"protocol": "random", "seed": 0},)
    model_settings: str = "default"
    models_config: dict = field(default_factory=dict)
    # name -> {model: registered name, config: {...}}: one model under several settings in one grid
    aliases: dict = field(default_factory=dict)
    # settings of the LLM judge run after the grid (bench.judge.JudgeConfig); empty = no judge
    judge: dict = field(default_factory=dict)
    # False: its settings check that everything runs (tiny models, a few epochs), so `bench report`
    # never answers a claim of the paper from its results (they read "not tested")
    evidence: bool = True
    # False when the preset's judge pass only checks that the judge runs (a few users, a weak judge):
    # `bench report` then does not answer the judge claim from it
    judge_evidence: bool = True
    # jobs run at once when `bench run --jobs` is not given (capped at the machine's CPU count)
    jobs: int = 1
    topk: int = 100
    ks: tuple[int, ...] = (20, 40, 100)


def preset_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_preset(name: str) -> Preset:
    path = CONFIG_DIR / "presets" / f"{name}.yaml"
    if "/" in name or not path.exists():
        close = difflib.get_close_matches(name, preset_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown preset {name!r}.{hint} Presets: {', '.join(preset_names())}")
    data = _read_yaml(path)
    known = {f.name for f in dataclasses.fields(Preset)}
    extra = set(data) - known
    if extra:
        raise ConfigError(f"{path}: unknown keys {sorted(extra)}; allowed: {sorted(known - {'name'})}")
    for key in ("datasets", "models", "seeds", "splits", "ks"):
        if key in data and isinstance(data[key], (str, int, dict)):
            data[key] = [data[key]]
        if key in data:
            data[key] = tuple(data[key])
    return Preset(name=name, **data)


def parse_overrides(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    """["ease.l2=100", "split.protocol=loo"] -> {"ease": {"l2": 100}, "split": {"protocol": "loo"}}."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        scope, dot, name = key.strip().partition(".")
        if not sep or not dot or not scope or not name:
            raise ConfigError(f"--set {pair!r}: expected SCOPE.KEY=VALUE, e.g. ease.l2=100 or split.protocol=loo")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out.setdefault(scope, {})[name] = parsed
    return out


def model_yaml(model: str, settings: str) -> dict:
    path = CONFIG_DIR / "models" / f"{model}.yaml"
    if not path.exists():
        return {}
    data = _read_yaml(path)
    merged = dict(data.get("default") or {})
    if settings != "default":
        merged.update(data.get(settings) or {})
    return merged


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `values`, checking names and coercing simple types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: unknown setting {key!r}.{hint} Settings: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            coerced = hint(value)
            if hint is float and not math.isfinite(coerced):
                # inf/nan would train nothing and be recorded as a run with every metric 0
                raise ConfigError(f"{where}: {value!r} is not a finite number")
            return coerced
        if origin is tuple:
            items = value if isinstance(value, (list, tuple)) else [value]
            args = typing.get_args(hint)
            inner = args[0] if args else Any
            return tuple(_coerce(v, inner, where) if inner is not Any else v for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) for each field, for `bench ls --model NAME`."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out.append((f.name, default, f.metadata.get("help", "")))
    return out
