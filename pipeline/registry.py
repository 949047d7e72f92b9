"""A registry of named plug-ins (model families, data sources): each a class with a pydantic
``Params`` whose every field has a default, registered by a class decorator under a name that can
be a path component, a DVC matrix value and an MLflow tag. The built-ins come first, in the order
their modules are listed, then the others as registered."""
from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T")
C = TypeVar("C", bound=type)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: Callable[[], tuple[ModuleType, ...]], reserved: tuple[str, ...] = ()):
        # builtins: imports the built-in modules (which registers them) and returns them in order.
        self.kind, self.builtins, self.reserved = kind, builtins, reserved
        self._items: dict[str, T] = {}

    def check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in self.reserved:
            raise ValueError(f"{self.kind} name {name!r}: lowercase letters, digits and _, starting with a letter"
                             + (f", and not one of {self.reserved}" if self.reserved else ""))

    def add(self, name: str, item: T, replace: bool = False) -> T:
        """Register ``item`` (an instance of a class with ``Params``) as ``name``; ``replace``: a
        name registered before by the same means may be given a new item."""
        self.check_name(name)
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({type(self._items[name]).__qualname__})")
        params = getattr(item, "Params", None)
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"{self.kind} {name!r}: Params must be a pydantic model class")
        try:
            params()
        except ValidationError as err:
            raise TypeError(f"{self.kind} {name!r}: every field of Params needs a default ({err})") from None
        item.name = name
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: register an instance of the decorated class as ``name``."""
        self.check_name(name)

        def decorate(cls: C) -> C:
            self.add(name, cls())
            return cls

        return decorate

    def items(self) -> dict[str, T]:
        """Every registered item, the built-ins first (importing their modules registers them)."""
        modules = self.builtins()
        rank = {m.__name__: i for i, m in enumerate(modules)}
        return dict(sorted(self._items.items(), key=lambda kv: rank.get(type(kv[1]).__module__, len(rank))))

    def names(self) -> tuple[str, ...]:
        return tuple(self.items())

    def get(self, name: str) -> T:
        try:
            return self.items()[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def remove(self, name: str) -> None:
        self._items.pop(name, None)
