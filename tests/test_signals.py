"""The two phases of pipeline.interrupts, in-process: before a command opens a store a signal
raises at once; after, it is only recorded, and raised at the next safe point."""
import os
import signal
import threading
import time

import pytest

from pipeline import interrupts


@pytest.fixture(autouse=True)
def fresh():
    interrupts.install()
    yield
    interrupts.install()


def test_during_start_up_a_signal_raises_at_once():
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # never reached: the handler raises
    assert interrupts.received() == "SIGINT"


def test_after_defer_a_signal_is_recorded_and_raised_at_the_next_check():
    interrupts.defer()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # the handler has run: nothing raised here
    assert interrupts.received() == "SIGTERM"
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        interrupts.check()
    with pytest.raises(interrupts.Interrupted):  # and at every later one
        interrupts.check()


def test_defer_raises_a_signal_that_came_before():
    interrupts.defer()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(interrupts.Interrupted):
        interrupts.defer()


def test_interruptible_sleep_returns_early():
    interrupts.defer()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    with pytest.raises(interrupts.Interrupted):
        interrupts.sleep(30)
    assert time.monotonic() - t0 < 5


def test_install_forgets_an_earlier_signal_only_when_asked():
    interrupts.defer()
    os.kill(os.getpid(), signal.SIGINT)
    interrupts.install(forget=False)
    assert interrupts.received() == "SIGINT"
    interrupts.install()
    assert interrupts.received() is None
    interrupts.check()  # nothing pending


def test_during_start_up_a_signal_in_the_import_machinery_is_raised_once_out_of_it():
    """Raised inside importlib (a module lock's weakref callback, between taking the import lock
    and the ``try`` that gives it back), the exception left the import lock held and the process
    hung at exit. There the handler only sends the signal again, and it is raised in the next code."""
    import sys

    code = compile("import sys\nframe = sys._getframe()", "<frozen importlib._bootstrap>", "exec")
    space: dict = {}
    exec(code, space)
    interrupts._record(signal.SIGINT, space["frame"])  # as if the signal landed there: no raise
    assert interrupts.received() == "SIGINT"
    t0 = time.monotonic()
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        time.sleep(5)  # the signal comes again, here, and raises
    assert time.monotonic() - t0 < 1
    with pytest.raises(interrupts.Interrupted):  # anywhere else: at once
        interrupts._record(signal.SIGINT, sys._getframe())
