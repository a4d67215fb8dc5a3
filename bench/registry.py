"""One registry type for models, datasets and presets.

Entries are registered by name with a lazy ``"module:attr"`` target, so listing them
(`bench ls`) or rendering tables never imports torch or RecBole. Names are kebab-case;
a duplicate name raises and an unknown name answers with "did you mean ...".
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from bench.errors import UnknownNameError

_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: Any  # "module:attr" string (lazy) or the object itself
    meta: dict[str, Any] = field(default_factory=dict)
    args: tuple = ()  # when given, the target is a factory called with them

    def load(self) -> T:
        obj = self.target
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            obj = importlib.import_module(module_name)
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
        return obj(*self.args) if self.args else obj  # type: ignore[return-value]


class Registry(Generic[T]):
    def __init__(self, kind: str, dynamic: Callable[[str], Entry[T] | None] | None = None):
        """`dynamic(name)` may build entries on demand for a family of names (e.g.
        "recbole:NARM" -> any RecBole model); it returns None for names it does not know."""
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._dynamic = dynamic

    def register(self, name: str, target: Any, **meta: Any) -> None:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be lower-case kebab-case")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, dict(meta))

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or (self._dynamic is not None and self._dynamic(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry[T]:
        if name in self._entries:
            return self._entries[name]
        built = self._dynamic(name) if self._dynamic is not None else None
        if built is None:
            raise UnknownNameError(self.unknown_message(name))
        return built

    def get(self, name: str) -> T:
        return self.entry(name).load()

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Run `bench ls` to see every {self.kind}."

    def resolve(self, spec: str | list[str] | None, default: list[str] | None = None) -> list[str]:
        """Turn "a,b", ["a", "b"] or "all" into a checked list of names (order kept, no repeats)."""
        if spec is None or spec == "" or spec == []:
            names = list(default if default is not None else self._entries)
        else:
            parts = spec.split(",") if isinstance(spec, str) else list(spec)
            names = []
            for part in (p.strip() for p in parts):
                if not part:
                    continue
                names.extend(self._entries if part == "all" else [part])
        out: list[str] = []
        for name in names:
            self.entry(name)  # raises with a suggestion
            if name not in out:
                out.append(name)
        return out
