"""Test-only: Ctrl-C at an exact moment of a pipeline process.

On the test's PYTHONPATH, Python imports this file at start-up. When ``SIGNAL_AT`` is set to
``module:Qualified.name[:before|after][:N]``, the N-th call (default 1st) of that function sends
SIGINT to the whole process group (what Ctrl-C in a terminal does) just before or after the call
runs, and appends the time to the file ``SIGNAL_LOG``. The module is patched the moment it is
first imported, so the process is otherwise untouched.
"""
import importlib.abc
import importlib.util
import os
import signal
import sys
import time

_SPEC = os.environ.get("SIGNAL_AT")


def _patch(module, qualname: str, when: str, nth: int) -> None:
    *owners, name = qualname.split(".")
    owner = module
    for part in owners:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def fire():
        with open(os.environ["SIGNAL_LOG"], "a") as log:
            log.write(f"{time.time()}\n")
        os.killpg(os.getpgrp(), signal.SIGINT)

    def wrapper(*args, **kwargs):
        calls[0] += 1
        hit = calls[0] == nth
        if hit and when == "before":
            fire()
        try:
            return original(*args, **kwargs)
        finally:
            if hit and when == "after":
                fire()

    setattr(owner, name, wrapper)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, qualname: str, when: str, nth: int):
        self.args = (module, qualname, when, nth)

    def find_spec(self, fullname, path, target=None):
        if fullname != self.args[0]:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module, *self.args[1:])

        spec.loader.exec_module = exec_module
        return spec


if _SPEC:
    _module, _qualname, *_rest = _SPEC.split(":")
    _when = _rest[0] if _rest else "before"
    _nth = int(_rest[1]) if len(_rest) > 1 else 1
    sys.meta_path.insert(0, _PatchOnImport(_module, _qualname, _when, _nth))
