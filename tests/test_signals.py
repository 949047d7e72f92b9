"""The two phases of pipeline.interrupts: before a command opens a store or writes, a signal ends
the process at once (in a child process here); after, it is only recorded, and raised at the next
safe point (in this process)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline import interrupts


@pytest.fixture(autouse=True)
def fresh():
    interrupts.install()
    yield
    interrupts.install()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # this test process's own again
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


START_UP_BODIES = {
    "sleeping": "time.sleep(60)",
    # Libraries' broad excepts swallowed an exception raised from the handler: the process ran on.
    "swallowing every exception": "while True:\n    try:\n        sum(range(10**5))\n    except BaseException:\n        pass",
    # Raised inside importlib, an exception once left the import lock held: a hang at exit.
    "importing": "import importlib\nwhile True:\n    sys.modules.pop('json', None)\n    importlib.import_module('json')",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("body", list(START_UP_BODIES))
def test_during_start_up_a_signal_ends_the_process_at_once(body, signame):
    code = ("import sys, time\nfrom pipeline import interrupts\ninterrupts.install()\n"
            "print('ready', flush=True)\nprint('printed before the signal')\n" + START_UP_BODIES[body])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.2)  # inside the body
    sent = time.monotonic()
    proc.send_signal(getattr(signal, signame))
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{body}: still running 20 s after {signame}")
    assert time.monotonic() - sent < 5
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == interrupts.EXIT_INTERRUPTED, err
    assert err.endswith("interrupted\n"), err
    assert out == "printed before the signal\n"  # its buffered output kept


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
