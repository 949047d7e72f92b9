"""Ctrl-C and SIGTERM as one exception, so every layer ends its work the same way.

Both become :class:`Interrupted` (a ``KeyboardInterrupt``): MLflow runs end KILLED with the energy
measured so far, Optuna marks the running trial failed and stops, the CLI exits 130. Lightning
turns an interrupt inside ``Trainer.fit`` into ``sys.exit(1)`` (and a SIGTERM into its own
``SIGTERMException``); :func:`reraise_interrupt` gives the interrupt back.
"""
from __future__ import annotations

import signal
import threading


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received."""


_received: str | None = None


def _raise(signum, frame):
    global _received
    _received = signal.Signals(signum).name
    raise Interrupted(_received)


def check() -> None:
    """Raise :class:`Interrupted` if a signal came and its exception was swallowed (Python drops
    exceptions raised while it holds an import lock); called at every training step and trial."""
    if _received is not None:
        raise Interrupted(_received)


def install() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread of this process."""
    global _received
    if threading.current_thread() is threading.main_thread():
        _received = None
        signal.signal(signal.SIGINT, _raise)
        signal.signal(signal.SIGTERM, _raise)


def reraise_interrupt(trainer, exit_: SystemExit) -> None:
    """Call from ``except SystemExit`` around ``trainer.fit``: an interrupted fit raises
    :class:`Interrupted` again (with this process's handlers restored); any other exit is
    re-raised as it was."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exit_, SIGTERMException):
        name = "SIGTERM"
    elif trainer.interrupted and isinstance(exit_.__context__, KeyboardInterrupt):
        name = str(exit_.__context__) or "SIGINT"  # ours carries the signal's name
    else:
        raise exit_
    install()  # Lightning set SIGINT to "ignore" while it shut down
    raise Interrupted(name) from exit_
