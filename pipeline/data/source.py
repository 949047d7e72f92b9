"""Data sources: the interface one source implements, and the registry ``data.dataset`` names.

A source is one module that knows one kind of data: its typed parameters (``data.<name>`` in
params.yaml), what must be set when it is chosen, and how to read raw samples and labels, with the
splits the data comes with (an archive's official train/test split) or as one pool that the
``prepare`` stage splits itself. Everything after reading (checks, label mapping, splitting,
normalisation, padding, the data card) is the same for every source and lives in
``pipeline.data.prepare``; no code outside a source's module branches on its name.

A source subclasses ``Source`` and registers itself::

    @register_source("mydata")
    class MyData(Source):
        Params = MyDataParams                    # a pydantic model: fields with defaults

        def load(self, params):
            x, y = ...
            return Loaded({"all": (x, y)}, layout="sequence", files={"all": params.path})

This module imports neither numpy's heavy friends nor the readers (aeon, pandas, Pillow): loading
the config stays cheap; each source imports its reader when it loads.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.registry import Registry

S = TypeVar("S", bound=type)

#: How samples are normalised, from statistics of the training split only: ``channel``: one mean
#: and standard deviation per channel (over samples and time steps or pixels); ``feature``: one per
#: input element (each column of a table); ``none``: as read.
Normalization = Literal["none", "channel", "feature"]
#: The keys ``Loaded.splits`` may hold: one pool to split, or given splits.
POOL, GIVEN = ("all",), ("train", "val", "test")


class DataError(ValueError):
    """Data that cannot be used; the message names the file or key and what was expected."""


class SourceParams(BaseModel):
    """A convenient base for a source's ``Params``: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Loaded:
    """What a source read. ``splits`` maps ``"all"`` (one pool, split by ``prepare``) or ``"train"``
    and ``"test"`` (and optionally ``"val"``: else a stratified part of train) to ``(x, y)``: ``x``
    an array with samples first, or, for series of unequal length, a list of (channels, length)
    arrays; ``y`` labels of any type (numbers or text). ``files`` names, per split, what errors
    about it should name (a file, or the key that chose it)."""

    splits: dict[str, tuple[Any, Any]]
    layout: Literal["sequence", "image"]
    files: dict[str, str]
    #: The declared order of the classes (an archive header's); None: sorted.
    classes: list | None = None
    #: Extra entries of the data card (archive name, feature names, image size, ...).
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = set(self.splits)
        if keys != set(POOL) and not ({"train", "test"} <= keys <= set(GIVEN)):
            raise ValueError(f"Loaded.splits: expected 'all' or 'train' and 'test' (and 'val'), got {sorted(keys)}")


class Source(ABC):
    """One data source. A subclass sets ``Params`` and implements ``load``."""

    #: The registered name (set by ``register_source``): the value of ``data.dataset``.
    name: str = ""
    #: The source's parameters (``data.<name>``): a pydantic model whose every field has a default.
    Params: ClassVar[type[BaseModel]]
    #: ``data.normalize: auto`` means this.
    default_normalization: ClassVar[Normalization] = "channel"

    def check(self, params: BaseModel) -> None:
        """Checks that hold only when this source is chosen (a path that must be set), raised as
        ``ValueError("@<key>: <what is wrong>")`` so the error names ``data.<name>.<key>``."""

    def describe(self, params: BaseModel) -> str:
        """What an error about the data as a whole names."""
        return f"data.dataset={self.name!r}"

    @abstractmethod
    def load(self, params: BaseModel) -> Loaded:
        """Read the raw data; raise ``DataError`` naming the file and what is wrong."""


def _builtins() -> tuple:
    # The built-ins register themselves when first imported, in this order.
    from pipeline.data import digits, images, mnist1d, npz, table, ucr

    return mnist1d, digits, npz, ucr, table, images


_SOURCES: Registry[Source] = Registry("data source", _builtins,
                                      reserved=("dataset", "val_fraction", "test_fraction", "normalize"))


def register_source(name: str) -> Callable[[S], S]:
    """Class decorator: register an instance of the decorated ``Source`` subclass as ``name``."""
    return _SOURCES.register(name)


def sources() -> tuple[str, ...]:
    """The registered sources' names (the built-ins first)."""
    return _SOURCES.names()


def get_source(name: str) -> Source:
    return _SOURCES.get(name)
