"""Registries: every string choice of the project is a key of one (name -> builder).

A config field that names an optimizer, a schedule, a block, a pipeline, a
sampler, a pruner, a search space or a preset takes its allowed values from a
registry's keys, and looking up an unknown name is a one-line error that lists
the choices: there is no ``if``-chain whose last branch silently catches the rest.

Usage:
    OPTIMIZERS = Registry("optimizer")

    @OPTIMIZERS.register("sgd")
    def _sgd(groups, cfg): ...

    build = OPTIMIZERS.get(cfg.optimizer)   # ValueError: unknown optimizer 'x'; choose one of sgd, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> entry table with a named error for unknown names."""

    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = dict(entries or {})

    def declared(self, names: tuple[str, ...]) -> Registry[T]:
        """Checks, once every entry is registered, that the keys are the names a config declares for this
        choice (cifar/config.py), in its order: the config validates against its names, the registry builds."""
        assert self.names == tuple(names), f"{self.kind}: registered {self.names}, the config declares {names}"
        return self

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``name`` (a duplicate is an internal error)."""
        def add(entry: T) -> T:
            assert name not in self._entries, f"{self.kind} {name!r} registered twice"
            self._entries[name] = entry
            return entry
        return add

    def get(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def check(self, name: str) -> None:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
