"""Plugin registries: one per kind (source, step, serializer, handler).

A plugin is a class with an ``Options`` pydantic model whose ``type`` field is a ``Literal`` naming it. Built-in
plugins live one module per plugin inside the kind's package and register themselves with the decorator;
the registry imports those modules on first use, and third-party packages add theirs through the entry-point
group ``photonstream.<kind>s``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoints, entry_points
from typing import Any, Generic, TypeVar

from photonstream.errors import PluginNotFoundError

T = TypeVar("T")


@cache
def _installed_entry_points() -> EntryPoints:
    """Every installed distribution's entry points, read once for all four registries (each read scans them all)."""
    return entry_points()


def plugin_name(cls: type) -> str:
    """The name a plugin is registered under: the default of its Options model's ``type`` field."""
    options = cls.Options  # type: ignore[attr-defined]
    return str(options.model_fields["type"].default)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._plugins: dict[str, type[T]] = {}
        self._discovered = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register ``cls`` under its Options ``type`` name."""
        name = plugin_name(cls)
        existing = self._plugins.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({existing} and {cls})")
        self._plugins[name] = cls
        return cls

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_") and mod.name != "base":
                importlib.import_module(f"{self.package}.{mod.name}")
        for ep in _installed_entry_points().select(group=f"photonstream.{self.kind}s"):
            self.register(ep.load())

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._plugins)

    def classes(self) -> list[type[T]]:
        self._discover()
        return [self._plugins[n] for n in sorted(self._plugins)]

    def get(self, name: str) -> type[T]:
        self._discover()
        try:
            return self._plugins[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise PluginNotFoundError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, options: Any, *args: Any, **kwargs: Any) -> T:
        """Instantiate the plugin that ``options`` (a validated Options model) names."""
        cls: Callable[..., T] = self.get(options.type)
        return cls(options, *args, **kwargs)
