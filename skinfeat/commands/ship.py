"""See why, and ship it: explain (heatmaps + metadata attribution), export (ONNX), serve (web
page)."""
from __future__ import annotations

import click

from .deploy import predictor_options


def needs(module: str, extra: str):
    try:
        __import__(module)
    except ImportError as exc:
        raise click.ClickException(f"this command needs the '{extra}' extra: "
                                   f"pip install 'skinfeat[{extra}]' ({exc})") from exc


@click.command()
@predictor_options
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="One image file.")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False),
              help="Batch: columns image (path) or image_id, plus metadata columns.")
@click.option("--meta", "meta_pairs", multiple=True, metavar="FIELD=VALUE",
              help="Metadata for --image, repeatable (e.g. --meta age=55 --meta sex=female); "
              "fields left out are missing.")
@click.option("--class", "target", help="Also show the heatmap for this class.")
@click.option("--method", type=click.Choice(["gradcam", "gradcam++", "xgradcam", "hirescam",
                                             "layercam", "scorecam", "eigencam"]),
              help="CAM variant [default: gradcam; scorecam for LightGBM models].")
@click.option("--out", default="explain", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the PNGs (one per image, named after it).")
def explain(run, weights_file, device, batch_size, workers, image, csv_path, meta_pairs, target,
            method, out) -> None:
    """Where the model looked (Grad-CAM) and how much each metadata field moved it, as PNGs."""
    needs("pytorch_grad_cam", "explain")
    from ..api import ExplainError, load_model

    if bool(image) == bool(csv_path):
        raise click.UsageError("pass exactly one of --image or --csv")
    if csv_path and meta_pairs:
        raise click.UsageError("--meta goes with --image; a CSV has metadata columns")
    model = load_model(run, weights_file=weights_file, device=device, batch_size=batch_size,
                       num_workers=workers)
    if model.random_weights:
        click.echo("NOTE: " + model.random_note("heatmaps and probabilities mean nothing "
                                                "clinically."), err=True)
    try:
        for png, ex in model.explain_to(out, image=image, csv=csv_path, meta=meta_pairs,
                                        target=target, method=method):
            click.echo(f"{png}: {ex.decision.line()}")
    except ExplainError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command()
@predictor_options
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the graph; FILE.json is written beside it.")
@click.option("--opset", type=int, default=17, show_default=True)
def export(run, weights_file, device, batch_size, workers, onnx_path, opset) -> None:
    """One ONNX graph: image tensor + encoded metadata -> calibrated probabilities (a fold
    ensemble: every member in one graph, as predict averages them)."""
    needs("onnx", "export")
    from ..api import load_model

    model = load_model(run, weights_file=weights_file, device="cpu")
    graph, side = model.export_onnx(onnx_path, opset=opset)
    click.echo(f"{graph}: {graph.stat().st_size / 1e6:.1f} MB; preprocessing, classes and "
               f"metadata encoding in {side} (and in the graph's metadata)")
    if model.members:
        n = len(model.members)
        click.echo(f"a fold ensemble of {n} members: one shared backbone and one "
                   f"metadata input per member (meta_0 .. meta_{n - 1}), each "
                   f"encoded with its member's encoder (members[i].metadata in {side.name})")
    if model.random_weights:
        click.echo("NOTE: " + model.random_note("this graph carries them."), err=True)


@click.command()
@predictor_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default is reachable from this machine only.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True)
@click.option("--top-k", type=int, default=3, show_default=True)
def serve(run, weights_file, device, batch_size, workers, host, port, max_upload_mb,
          top_k) -> None:
    """A local web page (and JSON API): upload an image, fill in metadata, see why."""
    needs("fastapi", "serve")
    needs("uvicorn", "serve")
    from ..api import load_model
    from ..api import serve as run_server

    model = load_model(run, weights_file=weights_file, device=device, batch_size=batch_size,
                       num_workers=workers)
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else \
        "EVERY machine that can reach this address: no authentication, no encryption"
    click.echo(f"serving {run} on http://{host}:{port}/ , reachable from {where} "
               "(--host sets the address). Research use only.")
    if model.random_weights:
        click.echo("NOTE: " + model.random_note("the page says so on every result."), err=True)
    run_server(model, host=host, port=port, max_upload_bytes=int(max_upload_mb * 1e6),
               top_k=top_k)
