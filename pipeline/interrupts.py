"""Ctrl-C and SIGTERM as a request to stop, honoured at safe points.

Two phases. During start-up (imports, reading params and data) nothing has been started or
written: the handler ends the process at once (``interrupted``, exit status 130), whatever the
main thread is doing. From :func:`defer` on (called before a command opens a store -- the MLflow
client, an Optuna storage -- or writes an output) the handlers only *record* the signal, and
:func:`check` raises it at points where every layer can end its work the same way: each training
step, before each trial, between inference passes, when a tracked run starts or ends. MLflow runs
then end KILLED with the energy measured so far, Optuna's trial ends FAIL marked interrupted
(retried and not counted on resume), and the CLI exits 130 leaving no half-written output.

Why not raise from the handler, as Python does by default: an exception raised at an arbitrary
bytecode lands, sooner or later, inside a library's critical section. Two such landings broke
``dvc repro`` under Ctrl-C: inside Optuna's ``_run_trial``, between starting its (non-daemon)
heartbeat thread and the ``try`` that stops it, the thread ran on forever and the process never
exited after printing "interrupted"; between ``study.ask()`` and the objective's ``try``, the trial
stayed RUNNING until the heartbeat failed it, so it was neither counted nor marked interrupted.
Neither can happen when the exception is raised only from our own code.

Nor does start-up raise from the handler: raised inside an import, the exception was swallowed by
libraries' broad ``except`` clauses (the command then ran on, importing and training, for 3 s and
more beside busy cores), left half-imported modules that failed later with unrelated errors, and,
inside Python's import machinery, the import lock held (a hang at exit).

Lightning turns a ``KeyboardInterrupt`` inside ``Trainer.fit`` into ``sys.exit(1)`` (and a SIGTERM
into its own ``SIGTERMException``); :func:`reraise_interrupt` gives the interrupt back.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; its message is the signal's name."""


_received: str | None = None
_deferred = False
_event = threading.Event()


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def _exit_at_once() -> None:
    """End the process now: start-up has nothing to end or remove. What was printed is kept."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 -- the main thread was inside a write: its text is lost
            pass
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def _record(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signal.Signals(signum).name
    _event.set()
    if not _deferred:
        _exit_at_once()


def defer() -> None:
    """From now on signals are only recorded and raised by :func:`check`. Call before opening a
    store, writing an output or starting anything that must be ended (a run, a study, a worker).
    Raises at once if a signal was recorded before (a command run again in one process)."""
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
