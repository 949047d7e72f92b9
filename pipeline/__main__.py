# Handle Ctrl-C / SIGTERM from the very start: a signal during the imports below ends the
# command at once, with exit status 130 and no traceback.
import sys

from pipeline import interrupts

interrupts.install()
try:
    from pipeline.cli import main
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
