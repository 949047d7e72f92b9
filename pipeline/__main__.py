"""The process entry point: ``python -m pipeline`` and the ``pipeline`` command.

Ctrl-C / SIGTERM are handled from the very start: a signal during the imports ends the command at
once, with exit status 130 and no traceback (pipeline.interrupts).

At exit the objects the imports created (torch, Lightning, MLflow, pandas: a few million) are
frozen out of the interpreter's final garbage collection, which otherwise walks all of them:
1.5 s of every command here, 3-4 s beside busy cores, and most of what Ctrl-C waited for once the
command had stopped (`benchmarks/stage_overhead.py` measures it). ``atexit`` handlers still run,
files are still closed; only cyclic garbage left at exit is not finalized, as Python never
promises it is.

Where a warm server runs (``pipeline.warm``), the command runs in a child it forks, with the
libraries already imported; this process waits for it.
"""
import gc
import sys

from pipeline import interrupts, warm, worktime


def run() -> None:
    interrupts.install()
    if warm.enabled():
        code = warm.run_command(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        interrupts.install()
    warm.started_in_server()
    from pipeline.cli import main

    code = main()
    worktime.log_at_exit(code)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
