"""A local web page and JSON API for one trained run (FastAPI; the page has no external assets).

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart).

Safe by default: the CLI binds 127.0.0.1; a request body above the size limit is refused
(413) before it is stored, whether or not it declares its length; an upload that is not an image
(415), a decompression bomb (413) or an undecodable image (422) gets a one-line reason; the
upload is written under a fresh temporary folder with a name chosen here, never the client's,
and the folder is removed after the request. The model runs one request at a time (a lock), so
concurrent requests never share hooks or buffers; each response carries its image's sha256.
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import tempfile
import threading
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from ..data.datasets import DataError
from ..embed.transform import MAX_IMAGE_PIXELS, load_image
from ..errors import SkinfeatError
from .explain import Explainer, ExplainError, overlay

log = logging.getLogger(__name__)

NOTICE = "Research use only. Not a medical device; not a diagnosis."
RANDOM_WHOLE = "these probabilities and heatmaps mean nothing clinically."
FORM_OVERHEAD = 64 * 1024      # multipart boundaries and metadata fields on top of the image


class RequestTooLarge(SkinfeatError):
    """An upload over the size limit (answered 413)."""


class BodyLimit:
    """ASGI middleware: refuse a request body above ``limit`` bytes with 413, while streaming
    (a missing or false Content-Length does not get past it)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise RequestTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        mb = (self.limit - FORM_OVERHEAD) / 1e6
        response = JSONResponse({"detail": f"upload too large: the limit is {mb:.1f} MB"},
                                status_code=413)
        await response(scope, receive, send)


def check_image(path: Path, spec) -> None:
    """Decode the upload as the model will; raise ``UploadRejected`` with a status and reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            load_image(path, spec)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRejected(413, f"image has too many pixels (over {MAX_IMAGE_PIXELS:,}): "
                                  f"refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise UploadRejected(415, "not an image file (no known image format)") from exc
    except Exception as exc:  # truncated data, 32-bit pixels: any decoder error is a 422
        raise UploadRejected(422, f"the image cannot be decoded ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") \
            from exc


class UploadRejected(SkinfeatError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def png_data_url(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Service:
    """The model behind the page: schema, validation, one explanation at a time."""

    def __init__(self, predictor, top_k: int = 3):
        self.p, self.top_k = predictor, top_k
        self.explainer = Explainer(predictor)
        self.lock = threading.Lock()

    def info(self) -> dict:
        enc = self.p.encoder
        return {"classes": self.p.classes, "top_k": self.top_k,
                "fields": [{"name": f, "kind": "number"} for f in enc.numeric] +
                          [{"name": f, "kind": "category", "choices": enc.categories[f]}
                           for f in enc.categorical],
                "weights": self.p.weights, "random_weights": self.p.random_weights,
                "random_note": self.p.random_note(RANDOM_WHOLE),
                "model_kind": self.p.model.kind, "cam_method": self.explainer.default_method(),
                "notice": NOTICE}

    def metadata(self, form: dict) -> dict:
        """Validated metadata from form fields; blank means missing."""
        enc = self.p.encoder
        meta: dict[str, float | str] = {}
        for f in enc.numeric:
            value = str(form.get(f, "")).strip()
            if value:
                try:
                    meta[f] = float(value)
                except ValueError:
                    raise UploadRejected(422, f"{f} must be a number, got {value[:40]!r}") \
                        from None
                if not np.isfinite(meta[f]):   # nan / inf would be silently "missing"
                    raise UploadRejected(422, f"{f} must be a finite number or blank (blank "
                                              f"is missing), got {value[:40]!r}")
        for f in enc.categorical:
            value = str(form.get(f, "")).strip()
            if value and value not in enc.categories[f]:
                raise UploadRejected(422, f"{f} must be one of {', '.join(enc.categories[f])} "
                                          f"or blank, got {value[:40]!r}")
            if value:
                meta[f] = value
        unknown = sorted(set(form) - set(enc.numeric) - set(enc.categorical) -
                         {"image", "class", "method"})
        if unknown:
            raise UploadRejected(422, f"unknown field(s) {', '.join(unknown)[:200]}; this model "
                                      "takes " + (", ".join(enc.numeric + enc.categorical)
                                                  or "no metadata fields (the image alone)"))
        return meta

    def run(self, data: bytes, form: dict) -> dict:
        """Bytes of one upload + form fields -> the JSON answer (raises ``UploadRejected``)."""
        if not data:
            raise UploadRejected(422, "the uploaded file is empty")
        meta = self.metadata(form)
        target = str(form.get("class") or "") or None
        method = str(form.get("method") or "") or None
        _, spec = self.p._backbone()
        with tempfile.TemporaryDirectory(prefix="skinfeat-serve-") as tmp:
            path = Path(tmp) / "upload"       # our name, never the client's
            path.write_bytes(data)
            check_image(path, spec)
            with self.lock:
                try:
                    ex = self.explainer.explain(path, meta, target=target, method=method)
                except ExplainError as exc:
                    raise UploadRejected(422, str(exc)) from exc
                except DataError as exc:
                    raise UploadRejected(422, str(exc).replace(str(path), "upload")) from exc
        answer = ex.to_dict()
        answer.pop("image")
        answer.update(
            top=[{"class": c, "probability": p} for c, p in ex.top(self.top_k)],
            cams={c: png_data_url(overlay(ex.view, heat)) for c, heat in ex.cams.items()},
            image_sha256=hashlib.sha256(data).hexdigest(), weights=self.p.weights,
            random_weights=self.p.random_weights,
            random_note=self.p.random_note(RANDOM_WHOLE), temperature=self.p.temperature,
            notice=NOTICE)
        return answer


def create_app(predictor, *, max_upload_bytes: int = 20_000_000, top_k: int = 3):
    """The FastAPI app: ``/`` (the page), ``/api/info``, ``POST /api/predict`` (multipart)."""
    service = Service(predictor, top_k)
    page = resources.files("skinfeat").joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(title="skinfeat", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return service.info()

    @app.post("/api/predict")
    async def predict(request: Request) -> dict:
        try:
            form = await request.form(max_files=1, max_fields=64)
        except RequestTooLarge:
            raise
        except Exception as exc:  # malformed multipart, too many parts
            raise HTTPException(400, f"not a valid multipart form ({exc})"[:200]) from exc
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "no image: send the file as the form field 'image'")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        await form.close()
        try:
            return await run_in_threadpool(service.run, data, fields)
        except UploadRejected as exc:
            raise HTTPException(exc.status, exc.message) from None

    app.add_middleware(BodyLimit, limit=max_upload_bytes + FORM_OVERHEAD)
    return app


def serve(model, *, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = 20_000_000, top_k: int = 3) -> None:
    """``create_app(model)`` on uvicorn until stopped (``skinfeat.serve``)."""
    import uvicorn

    app = create_app(model, max_upload_bytes=max_upload_bytes, top_k=top_k)
    uvicorn.run(app, host=host, port=port, log_level="warning")
