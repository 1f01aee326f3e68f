"""The ``skinfeat`` command line: each command parses, calls one ``skinfeat.api`` function,
prints (tests/test_thin_cli.py holds every command module to that)."""
from __future__ import annotations

import logging
import sys

import click

from .commands import compare as compare_cmd, data as data_cmds, deploy, ship, stage_one
from .commands import audit as audit_cmd, stage_two
from .commands.common import progress_bar
from .embed.backbone import DEFAULT_BACKBONE, PRECISIONS

log = logging.getLogger("skinfeat")


class Group(click.Group):
    """Turns the library's expected errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        from .deploy.bundle import BundleError
        from .embed.backbone import WeightsUnavailable
        from .embed.cache import CacheError
        from .data.datasets import DataError
        from .data.download import DownloadError
        from .embed.engines import EngineUnavailable

        try:
            return super().invoke(ctx)
        except (DataError, CacheError, BundleError, WeightsUnavailable, DownloadError,
                EngineUnavailable, OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("\ninterrupted; rerun the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=Group)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="skinfeat")
def main(verbose: int) -> None:
    """Multi-modal skin lesion classification on cached frozen-backbone embeddings."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skinfeat").setLevel(min(level, logging.INFO) if verbose else level)



# ---------------------------------------------------------------- demo, weights, download
@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-images", default=1000, show_default=True)
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", type=click.Choice(["auto", "pretrained", "random"]), default="auto",
              show_default=True, help="auto: pretrained if cached or fetchable, else random.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: the fastest lossless or validated path: a GPU, native bf16, else "
              "int8 (OpenVINO, validated on the sample: see the README), else fp32.")
def demo(out: str, n_images: int, backbone: str, weights: str, precision: str) -> None:
    """Synthetic HAM10000-layout data -> extract -> fit-head -> report, offline, in minutes."""
    from .api import run_demo

    res = run_demo(out, n_images=n_images, backbone=backbone, weights=weights,
                   precision=precision, echo=click.echo, progress=progress_bar)
    stage_two.print_run_summary(res["metrics"], res["baseline"], res["info"], out)



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
