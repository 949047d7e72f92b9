# Record Ctrl-C / SIGTERM from the very start: a signal during the imports below is then honoured
# at the command's first safe point instead of raising inside whichever import is running.
from pipeline import interrupts

interrupts.install()

from pipeline.cli import main  # noqa: E402

raise SystemExit(main())
