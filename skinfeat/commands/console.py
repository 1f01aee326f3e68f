"""What the console shows around a command: log lines written above the progress bars (never
through them), a warning about the same cause printed once with its count, and every bar closed
before an error is printed (so "Error: ..." starts a line of its own)."""
from __future__ import annotations

import logging
import sys
from collections import Counter

import click

FORMAT = "%(levelname)s %(name)s: %(message)s"


class OncePerCause(logging.Filter):
    """Lets the first record of each cause through (a cause: the logger and the message
    template, whatever its values), counts the others; ``summary`` names the repeated ones."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.first: dict[tuple[str, str], str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        self.counts[key] += 1
        if self.counts[key] > 1:
            return False
        self.first[key] = record.getMessage()
        return True

    def summary(self) -> list[str]:
        out = []
        for key, n in self.counts.items():
            if n > 1:
                text = self.first[key]
                text = text if len(text) <= 90 else text[:87] + "..."
                out.append(f"WARNING: {n} warnings like \"{text}\" in this command (shown once)")
        return out


class BarSafeHandler(logging.StreamHandler):
    """Writes through ``tqdm.write``, which clears the bars, prints the line and redraws them
    (tqdm.contrib.logging's handler, to standard error)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:   # logging's own contract: a failed emit never raises
            self.handleError(record)


def setup_logging(level: int) -> None:
    """The command's log handler on the root logger, replacing the previous command's, unless
    someone else (a test's log capture, an embedding program) installed one: then theirs is
    left alone, as ``logging.basicConfig`` would. Repeated warnings are summarised when the
    command ends, error or not."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, BarSafeHandler)]:
        root.removeHandler(h)
    logging.getLogger("skinfeat").setLevel(level)
    if root.handlers:
        return
    once = OncePerCause()
    handler = BarSafeHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(once)
    root.addHandler(handler)
    root.setLevel(level)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        def print_summary() -> None:
            for line in once.summary():
                click.echo(line, err=True)

        ctx.call_on_close(print_summary)


def close_on_exit(bar):
    """Close ``bar`` when the command ends, also on an error: click closes the context before
    it prints "Error: ...", so the message starts on a line of its own."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(bar.close)
    return bar


def tqdm_factory(**kwargs):
    """The command line's bars: tqdm on standard error, with a total and an ETA, gone when done,
    shown only for loops over about 2 seconds (``skinfeat.progress.bars`` installs it)."""
    from functools import partial

    from tqdm.auto import tqdm

    options = dict(leave=False, dynamic_ncols=True, file=sys.stderr, delay=2, disable=None)
    options.update(kwargs)
    return partial(tqdm, **options)
