"""Objects named by import path in params.yaml (``"package.module:attribute"``): a user's model
callable, a torch optimizer or learning-rate scheduler. Every error names the params key."""
from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def resolve(target: Any, key: str) -> Any:
    """The object ``target`` names; ValueError naming ``key`` where it does not import. The
    working directory (the project root under DVC) is importable, as for ``python -m``."""
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise ValueError(f"{key}: {target!r} is not an import path of the form 'package.module:name'")
    module_name, _, attr = target.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raised while importing
        raise ValueError(f"{key}: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{key}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def check_keywords(fn: Any, kwargs: dict[str, Any], key: str, positional: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming ``key.<keyword>`` where ``fn`` (a callable or class) takes no such
    keyword, and naming ``key`` where it requires one that neither ``kwargs`` nor ``positional``
    (the arguments the pipeline passes itself) give."""
    if not callable(fn):
        raise ValueError(f"{key}: {fn!r} is not callable")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: its own call will say
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in kwargs:
        if name not in params and not takes_any:
            known = [p for p in params if p not in positional and params[p].kind is not inspect.Parameter.VAR_POSITIONAL]
            raise ValueError(f"{key}.{name}: not a keyword of {getattr(fn, '__qualname__', fn)}; it takes {known}")
    for name, p in params.items():
        if (p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and name not in kwargs and name not in positional):
            raise ValueError(f"{key}.{name}: required by {getattr(fn, '__qualname__', fn)} and not set")
