"""Ctrl-C and SIGTERM as a request to stop, honoured at safe points.

Two phases. During start-up (imports, reading params and data) nothing needs ending yet: a signal
raises :class:`Interrupted` (a ``KeyboardInterrupt``) at once, so the command exits without
waiting for its imports. From :func:`defer` on (called when a command first opens a store: the
MLflow client, an Optuna storage) the handlers only *record* the signal, and :func:`check` raises
it at points where every layer can end its work the same way: each training step, before each
trial, between inference passes, when a tracked run starts or ends. MLflow runs then end KILLED
with the energy measured so far, Optuna's trial ends FAIL marked interrupted (retried and not
counted on resume), and the CLI exits 130 leaving no half-written output.

During start-up the handler raises at once unless the signal landed inside Python's import
machinery or the threading module: raised there, the exception once left the interpreter's import
lock held and the process hung after printing "interrupted"; the handler then sends the signal
again 20 ms later, until it lands elsewhere.

Why not raise from the handler, as Python does by default: an exception raised at an arbitrary
bytecode lands, sooner or later, inside a library's critical section. Two such landings broke
``dvc repro`` under Ctrl-C: inside Optuna's ``_run_trial``, between starting its (non-daemon)
heartbeat thread and the ``try`` that stops it, the thread ran on forever and the process never
exited after printing "interrupted"; between ``study.ask()`` and the objective's ``try``, the trial
stayed RUNNING until the heartbeat failed it, so it was neither counted nor marked interrupted.
Neither can happen when the exception is raised only from our own code.

Lightning turns a ``KeyboardInterrupt`` inside ``Trainer.fit`` into ``sys.exit(1)`` (and a SIGTERM
into its own ``SIGTERMException``); :func:`reraise_interrupt` gives the interrupt back.
"""
from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; its message is the signal's name."""


_received: str | None = None
_deferred = False
_event = threading.Event()


# Code that must not be interrupted by an exception even during start-up: Python's import machinery
# (an exception between its ``_imp.acquire_lock()`` and the ``try`` that releases it leaves the
# interpreter's import lock held, and the process hangs at exit on its next import) and the
# threading module's lock handling.
_CRITICAL = ("<frozen importlib", threading.__file__)
REDELIVER_S = 0.02


def _in_critical_code(frame) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(_CRITICAL)


def _record(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signal.Signals(signum).name
    _event.set()
    if not _deferred:  # start-up: nothing to end cleanly yet
        if _in_critical_code(frame):
            # Not here: the signal is sent again in a moment, landing in other code.
            timer = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        raise Interrupted(_received)


def defer() -> None:
    """From now on signals are only recorded and raised by :func:`check` (call before opening a
    store or starting anything that must be ended: a run, a study, a worker). Raises at once if a
    signal came before (its exception may have been swallowed, e.g. inside a ``__del__``)."""
    global _deferred
    _deferred = True
    check()


def received() -> str | None:
    """The name of the first signal received since :func:`install`, or None."""
    return _received


def check() -> None:
    """Raise :class:`Interrupted` if a signal was received."""
    if _received is not None:
        raise Interrupted(_received)


def sleep(seconds: float) -> None:
    """``time.sleep`` that returns early, raising :class:`Interrupted`, when a signal comes."""
    _event.wait(seconds)
    check()


def _register() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _record)


def install(forget: bool = True) -> None:
    """Record SIGINT and SIGTERM in this process (main thread only). ``forget``: at the start of a
    process, drop a signal recorded earlier (a command run again in the same test process)."""
    global _received, _deferred
    if forget:
        _received = None
        _deferred = False
        _event.clear()
    _register()


def reraise_interrupt(trainer, exit_: SystemExit) -> None:
    """Call from ``except SystemExit`` around ``trainer.fit``: an interrupted fit raises
    :class:`Interrupted` again (with this process's handlers back in place of the "ignore" that
    Lightning sets while it shuts down); any other exit is re-raised as it was."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exit_, SIGTERMException):
        name = "SIGTERM"
    elif trainer.interrupted and isinstance(exit_.__context__, KeyboardInterrupt):
        name = str(exit_.__context__) or "SIGINT"  # ours carries the signal's name
    else:
        raise exit_
    _register()
    raise Interrupted(_received or name) from exit_
