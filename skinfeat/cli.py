"""The ``skinfeat`` command line: each command parses, calls one ``skinfeat.api`` function,
prints (tests/test_thin_cli.py holds every command module to that)."""
from __future__ import annotations

import logging
import sys

import click

from .commands import audit as audit_cmd
from .commands import compare as compare_cmd
from .commands import data as data_cmds
from .commands import deploy, ship, stage_one, stage_two
from .commands.common import progress_bar
from .embed.backbone import DEFAULT_BACKBONE
from .embed.device import PRECISIONS
from .errors import SkinfeatError

log = logging.getLogger("skinfeat")


class Group(click.Group):
    """Turns the errors skinfeat raises on purpose (``SkinfeatError``) into one ``Error: ...``
    line, and so an operating-system refusal of a named path (``OSError`` with a filename).
    Any other exception is a bug or a case not checked yet: a one-line summary that says so,
    or with ``-v`` its traceback."""

    def invoke(self, ctx: click.Context):
        from .commands.console import tqdm_factory
        from .progress import bars

        try:
            # The library's long loops (the linear probe's C search, the bootstraps) show bars
            # here; leaving the block closes any still open, before an error line is printed.
            with bars(tqdm_factory()):
                return super().invoke(ctx)
        except SkinfeatError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:   # not the file system refusing a path: unexpected
                return self._unexpected(ctx, exc)
            # The operating system refused a path (missing, a folder, no permission, disk
            # full): the user's to fix, said in one line that names the path.
            raise click.ClickException(f"{exc.filename}: {exc.strerror or exc}") from exc
        except KeyboardInterrupt:
            click.echo("\ninterrupted; rerun the same command to resume", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            return self._unexpected(ctx, exc)

    @staticmethod
    def _unexpected(ctx: click.Context, exc: Exception):
        """A bug, or a case skinfeat does not check yet: with -v its traceback, else one line
        that does not pass for a checked ``Error:``."""
        if ctx.params.get("verbose"):
            raise exc
        text = str(exc).strip().splitlines()
        click.echo(f"Unexpected {type(exc).__name__}" + (f": {text[0]}" if text else ""),
                   err=True)
        click.echo("(not an error skinfeat checks for: run with -v for the traceback)", err=True)
        sys.exit(1)


@click.group(cls=Group)
@click.option("-v", "--verbose", count=True,
              help="More log output (-vv for debug); an unexpected error shows its traceback.")
@click.version_option(package_name="skinfeat")
def main(verbose: int) -> None:
    """Multi-modal skin lesion classification on cached frozen-backbone embeddings."""
    from .commands.console import setup_logging

    setup_logging(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1
                  else logging.DEBUG)



# ---------------------------------------------------------------- demo, weights, download
@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-images", default=1000, show_default=True)
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", type=click.Choice(["auto", "pretrained", "random"]), default="auto",
              show_default=True, help="auto: pretrained if cached or fetchable, else random.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: the fastest lossless path: a GPU, native bf16, else fp32 (never "
              "int8: on real weights its embeddings drift, median cosine 0.965; ask for "
              "--precision int8).")
def demo(out: str, n_images: int, backbone: str, weights: str, precision: str) -> None:
    """Synthetic HAM10000-layout data -> extract -> fit-head -> report, offline, in minutes."""
    from .api import run_demo

    res = run_demo(out, n_images=n_images, backbone=backbone, weights=weights,
                   precision=precision, echo=click.echo, progress=progress_bar)
    stage_two.print_run_summary(res.metrics, res.baseline, res.info, out)



for command in (data_cmds.data, data_cmds.download, data_cmds.weights, stage_one.extract,
                stage_one.cache, stage_two.fit_head, stage_two.cv, stage_two.tune,
                deploy.predict, deploy.evaluate, deploy.card, ship.explain, ship.export,
                ship.serve):
    main.add_command(command)
main.add_command(stage_one.backbones)   # skinfeat backbones: the encoders to choose from
main.add_command(compare_cmd.compare)   # skinfeat compare: encoders / models, paired
main.add_command(audit_cmd.audit)       # skinfeat audit: duplicates, label issues, outliers


if __name__ == "__main__":
    main()
