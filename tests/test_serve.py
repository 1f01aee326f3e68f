"""serve: the JSON API answers like predict, refuses bad uploads with a 4xx, keeps requests
apart."""
from __future__ import annotations

import base64
import functools
import hashlib
import io
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("pytorch_grad_cam")
from fastapi.testclient import TestClient  # noqa: E402

from skinfeat.cli import main  # noqa: E402
from skinfeat.deploy.model import Model  # noqa: E402
from skinfeat.deploy.serve import create_app  # noqa: E402

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

LIMIT = 300_000


@pytest.fixture(scope="module")
def predictor(ship_runs):
    return Model(ship_runs["head"])


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, max_upload_bytes=LIMIT)) as c:
        yield c


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_schema(client, predictor):
    page = client.get("/")
    assert page.status_code == 200 and "Research use only" in page.text
    assert "http://" not in page.text and "https://" not in page.text   # no CDN, works offline
    info = client.get("/api/info").json()
    assert info["classes"] == predictor.classes and info["random_weights"] is True
    fields = {f["name"]: f for f in info["fields"]}
    assert list(fields) == predictor.encoder.numeric + predictor.encoder.categorical
    for name in predictor.encoder.categorical:
        assert fields[name]["choices"] == predictor.encoder.categories[name]


def test_predict_matches_the_library_and_never_uses_the_client_name(client, predictor,
                                                                    synth_table, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    row = synth_table.iloc[2]
    data = Path(row["path"]).read_bytes()
    r = client.post("/api/predict", files={"image": ("../../evil.jpg", data, "image/jpeg")},
                    data={"age": "55", "sex": "female", "localization": "back"})
    assert r.status_code == 200, r.text
    out = r.json()
    want = predictor.predict_image(row["path"], age=55, sex="female",
                                   localization="back").probabilities
    np.testing.assert_allclose([out["probabilities"][c] for c in want], list(want.values()),
                               atol=1e-6)
    assert out["prediction"] == max(want, key=want.get) and len(out["top"]) == 3
    assert out["random_weights"] and "RANDOM" in out["weights"]
    assert "Research use only" in out["notice"]
    assert out["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert set(out["attribution"]) == {"age", "sex", "localization"}
    png = base64.b64decode(out["cams"][out["prediction"]].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    # The upload lived in a temporary folder under tempfile's directory, now removed.
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "evil.jpg").exists() and not Path("../../evil.jpg").exists()


@functools.cache
def bomb() -> bytes:
    return png_bytes(Image.new("L", (12_000, 12_000)))   # 144 Mpx, ~140 kB of PNG


BAD_UPLOADS = {
    "text file named .jpg": ({"image": ("x.jpg", b"hello, not an image", "image/jpeg")}, {},
                             415, "not an image file"),
    "empty file": ({"image": ("x.jpg", b"", "image/jpeg")}, {}, 422, "empty"),
    "too large": ({"image": ("x.jpg", b"\xff" * (LIMIT + 100_000), "image/jpeg")}, {}, 413,
                  "upload too large"),
    "decompression bomb": ({"image": ("x.png", None, "image/png")}, {}, 413,
                           "decompression bomb"),
    "truncated jpeg": ({"image": ("x.jpg", "truncated", "image/jpeg")}, {}, 422,
                       "cannot be decoded"),
    "age not a number": ({"image": ("x.jpg", "ok", "image/jpeg")}, {"age": "old"}, 422,
                         "age must be a number"),
    "unknown category": ({"image": ("x.jpg", "ok", "image/jpeg")}, {"sex": "dog"}, 422,
                         "sex must be one of"),
    "unknown field": ({"image": ("x.jpg", "ok", "image/jpeg")}, {"weight": "80"}, 422,
                      "unknown field(s) weight"),
    "unknown class": ({"image": ("x.jpg", "ok", "image/jpeg")}, {"class": "cat"}, 422,
                      "unknown class"),
    "no image field": ({}, {"age": "50"}, 422, "no image"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_4xx_and_a_reason(client, synth_table, case):
    files, data, status, message = BAD_UPLOADS[case]
    good = Path(synth_table["path"].iloc[0]).read_bytes()
    contents = {None: bomb, "ok": lambda: good, "truncated": lambda: good[: len(good) // 3]}
    files = {k: (name, body if isinstance(body, bytes) else contents[body](), mime)
             for k, (name, body, mime) in files.items()}
    r = client.post("/api/predict", files=files or None, data=data)
    assert r.status_code == status, (r.status_code, r.text)
    assert message in r.json()["detail"], r.json()


def test_a_large_body_without_content_length_is_refused_while_streaming(client):
    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    def body():                       # a generator: httpx sends it chunked, no Content-Length
        yield head
        for _ in range(100):
            yield b"\xff" * 65536

    r = client.post("/api/predict", content=body(),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_concurrent_requests_do_not_mix_results(client, synth_table):
    images = [Path(p).read_bytes() for p in synth_table["path"].iloc[:3]]
    metas = [{"age": "30"}, {"age": "70", "sex": "male"}, {}]

    def ask(i):
        return client.post("/api/predict", files={"image": ("a.jpg", images[i], "image/jpeg")},
                           data=metas[i]).json()

    alone = [ask(i) for i in range(3)]
    results: dict[int, dict] = {}

    def worker(n):
        results[n] = ask(n % 3)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, out in results.items():
        want = alone[n % 3]
        assert out["image_sha256"] == want["image_sha256"]
        assert out["probabilities"] == pytest.approx(want["probabilities"], abs=1e-9)
        assert out["attribution"] == want["attribution"]
        assert out["cams"] == want["cams"]


def test_serve_binds_localhost_by_default_and_says_so(ship_runs, monkeypatch):
    import uvicorn
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(host=host,
                                                                                  port=port))
    r = CliRunner().invoke(main, ["serve", "--model", str(ship_runs["head"])])
    assert r.exit_code == 0, r.output
    assert seen == {"host": "127.0.0.1", "port": 8000}
    assert "http://127.0.0.1:8000/" in r.output and "this machine only" in r.output
    r = CliRunner().invoke(main, ["serve", "--model", str(ship_runs["head"]), "--host",
                                  "0.0.0.0", "--port", "8123"])
    assert seen == {"host": "0.0.0.0", "port": 8123} and "no authentication" in r.output
