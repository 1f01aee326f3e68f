"""Offline tests for skinfeat.data.download against a fake Dataverse on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from skinfeat.data.download import DATAVERSE_DOI, DownloadError, download_ham10000, unpack_zip

METADATA_CSV = (
    b"lesion_id,image_id,dx,dx_type,age,sex,localization\n"
    b"HAM_0000001,ISIC_0000001,nv,histo,45.0,male,back\n"
    b"HAM_0000002,ISIC_0000003,mel,histo,60.0,female,face\n"
)
METADATA_TAB_ARCHIVAL = METADATA_CSV.replace(b",", b"\t")  # what Dataverse serves by default


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    # JPEG magic + incompressible filler so a "half" transfer is a meaningful cut.
    return b"\xff\xd8\xff\xe0" + os.urandom(20_000 + seed)


class FakeDataverse:
    """Serves a dataset listing plus datafiles, with Range support and fault injection."""

    def __init__(self, *, metadata: bytes = METADATA_CSV, zip1_extra: dict | None = None):
        part1 = "HAM10000_images_part_1"
        self.zip1_members = {f"{part1}/ISIC_000000{i}.jpg": _jpeg(i) for i in (1, 2)}
        self.zip1_members.update(zip1_extra or {})
        # part 2 has no top-level folder: must land in HAM10000_images_part_2/
        self.zip2_members = {f"ISIC_000000{i}.jpg": _jpeg(i) for i in (3, 4, 5)}
        test_dir = "ISIC2018_Task3_Test_Images"
        self.test_members = {f"{test_dir}/ISIC_001000{i}.jpg": _jpeg(i) for i in (1, 2)}
        self.groundtruth = b"image,MEL,NV\nISIC_0010001,1.0,0.0\nISIC_0010002,0.0,1.0\n"
        # id -> (name listed by Dataverse, bytes of the (original) file)
        self.files = {
            11: ("HAM10000_images_part_1.zip", _zip(self.zip1_members)),
            12: ("HAM10000_images_part_2.zip", _zip(self.zip2_members)),
            13: ("HAM10000_metadata.tab", metadata),
            14: ("ISIC2018_Task3_Test_Images.zip", _zip(self.test_members)),
            15: ("ISIC2018_Task3_Test_GroundTruth.tab", self.groundtruth),
            16: ("HAM10000_segmentations_lesion_tschandl.zip", b"not wanted"),
        }
        self.original_names = {13: "HAM10000_metadata", 15: "ISIC2018_Task3_Test_GroundTruth.csv"}
        self.sha256_ids = {12}  # listed with checksum.type SHA-256 and no md5
        self.wrong_checksum: set[int] = set()
        self.cut_first: set[int] = set()  # ids whose first transfer stops half-way
        self.requests: list[tuple[str, str | None]] = []  # (path?query, Range header)
        self._lock = threading.Lock()

    def listing(self) -> dict:
        entries = []
        for fid, (name, data) in self.files.items():
            if fid in self.sha256_ids:
                df = {"checksum": {"type": "SHA-256", "value": hashlib.sha256(data).hexdigest()}}
            else:
                md5 = hashlib.md5(data).hexdigest()
                df = {"md5": md5, "checksum": {"type": "MD5", "value": md5}}
            if fid in self.wrong_checksum:
                df["checksum"]["value"] = "0" * len(df["checksum"]["value"])
                df.pop("md5", None)
            df.update(id=fid, filename=name, filesize=len(data))
            if fid in self.original_names:  # ingested tabular: listed size is the .tab's
                df.update(filesize=len(data) + 7, originalFileFormat="text/csv",
                          originalFileName=self.original_names[fid], originalFileSize=len(data))
            entries.append({"label": name, "dataFile": df})
        return {"status": "OK", "data": {"latestVersion": {"files": entries}}}

    def file_requests(self) -> list[tuple[str, str | None]]:
        return [r for r in self.requests if r[0].startswith("/api/access/")]

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                with fake._lock:
                    fake.requests.append((self.path, self.headers.get("Range")))
                if url.path == "/api/datasets/:persistentId/":
                    if query.get("persistentId") != [DATAVERSE_DOI]:
                        return self.send_error(404)
                    return self._send(200, json.dumps(fake.listing()).encode(), "application/json")
                if url.path.startswith("/api/access/datafile/"):
                    fid = int(url.path.rsplit("/", 1)[1])
                    if fid not in fake.files:
                        return self.send_error(404)
                    data = fake.files[fid][1]
                    if fid in fake.original_names and query.get("format") != ["original"]:
                        data = data.replace(b",", b"\t") + b"archive"  # the ingested .tab
                    return self._send_file(fid, data)
                self.send_error(404)

            def _send(self, code, body, ctype="application/octet-stream", extra=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _send_file(self, fid, data):
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    body = data[start:]
                    return self._send(206, body, extra={
                        "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                if fid in fake.cut_first:
                    fake.cut_first.discard(fid)
                    # Promise the full size, deliver half, then drop the connection.
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(200, data)

        return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment must never see the test traffic.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def serve():
    servers = []

    def start(fake: FakeDataverse) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_full_download_and_layout(tmp_path, serve):
    fake = FakeDataverse()
    base = serve(fake)
    seen = []
    out = download_ham10000(tmp_path / "ham", base_url=base, with_isic2018_test=True,
                            progress=lambda n, d, t: seen.append((n, d, t)))
    assert out == tmp_path / "ham"
    assert _names(out / "HAM10000_images_part_1") == {"ISIC_0000001.jpg", "ISIC_0000002.jpg"}
    assert _names(out / "HAM10000_images_part_2") == {f"ISIC_000000{i}.jpg" for i in (3, 4, 5)}
    assert _names(out / "ISIC2018_Task3_Test_Images") == {"ISIC_0010001.jpg", "ISIC_0010002.jpg"}
    for name, data in fake.zip2_members.items():
        assert (out / "HAM10000_images_part_2" / name).read_bytes() == data
    # Ingested metadata: original (comma-separated) fetched with ?format=original, named .csv
    assert (out / "HAM10000_metadata.csv").read_bytes() == METADATA_CSV
    assert not (out / "HAM10000_metadata").exists()
    assert (out / "ISIC2018_Task3_Test_GroundTruth.csv").read_bytes() == fake.groundtruth
    paths = [p for p, _ in fake.file_requests()]
    assert "/api/access/datafile/13?format=original" in paths
    assert not any(p.startswith("/api/access/datafile/16") for p in paths)  # not wanted
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))  # no leftovers
    assert seen and seen[-1][1] == seen[-1][2]


def test_without_isic_only_ham_files(tmp_path, serve):
    fake = FakeDataverse()
    out = download_ham10000(tmp_path, base_url=serve(fake))
    assert not (out / "ISIC2018_Task3_Test_Images").exists()
    assert {p for p, _ in fake.file_requests()} == {
        "/api/access/datafile/11", "/api/access/datafile/12",
        "/api/access/datafile/13?format=original"}


def test_tab_separated_metadata_keeps_its_name(tmp_path, serve):
    fake = FakeDataverse(metadata=METADATA_TAB_ARCHIVAL)
    out = download_ham10000(tmp_path, base_url=serve(fake))
    assert (out / "HAM10000_metadata").read_bytes() == METADATA_TAB_ARCHIVAL
    assert not (out / "HAM10000_metadata.csv").exists()


def test_interrupted_transfer_resumes_with_range(tmp_path, serve):
    fake = FakeDataverse()
    fake.cut_first.add(11)
    base = serve(fake)
    full = fake.files[11][1]
    with pytest.raises(DownloadError, match="run again to resume"):
        download_ham10000(tmp_path, base_url=base)
    part = tmp_path / "HAM10000_images_part_1.zip.part"
    assert part.read_bytes() == full[: len(full) // 2]
    assert not (tmp_path / "HAM10000_images_part_1.zip").exists()

    fake.requests.clear()
    download_ham10000(tmp_path, base_url=base)
    ranges = [r for p, r in fake.file_requests() if p == "/api/access/datafile/11"]
    assert ranges == [f"bytes={len(full) // 2}-"]
    assert (tmp_path / "HAM10000_images_part_1.zip").read_bytes() == full
    assert not part.exists()
    assert _names(tmp_path / "HAM10000_images_part_1") == {"ISIC_0000001.jpg", "ISIC_0000002.jpg"}


def test_checksum_mismatch_is_refused(tmp_path, serve):
    fake = FakeDataverse()
    fake.wrong_checksum.add(12)
    with pytest.raises(DownloadError, match="checksum") as info:
        download_ham10000(tmp_path, base_url=serve(fake))
    assert "HAM10000_images_part_2.zip" in str(info.value)
    assert not (tmp_path / "HAM10000_images_part_2.zip").exists()
    assert not (tmp_path / "HAM10000_images_part_2.zip.part").exists()
    assert not (tmp_path / "HAM10000_images_part_2").exists()


def test_rerun_downloads_nothing(tmp_path, serve):
    fake = FakeDataverse()
    base = serve(fake)
    download_ham10000(tmp_path, base_url=base, with_isic2018_test=True)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    fake.requests.clear()
    download_ham10000(tmp_path, base_url=base, with_isic2018_test=True)
    assert fake.file_requests() == []
    assert len(fake.requests) == 1  # only the listing
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_corrupt_local_file_is_downloaded_again(tmp_path, serve):
    fake = FakeDataverse()
    base = serve(fake)
    download_ham10000(tmp_path, base_url=base)
    (tmp_path / "HAM10000_metadata.csv").write_bytes(b"garbage\n")
    fake.requests.clear()
    download_ham10000(tmp_path, base_url=base)
    assert [p for p, _ in fake.file_requests()] == ["/api/access/datafile/13?format=original"]
    assert (tmp_path / "HAM10000_metadata.csv").read_bytes() == METADATA_CSV


def test_missing_file_in_listing_is_reported(tmp_path, serve):
    fake = FakeDataverse()
    del fake.files[14]
    with pytest.raises(DownloadError, match="ISIC2018_Task3_Test_Images"):
        download_ham10000(tmp_path, base_url=serve(fake), with_isic2018_test=True)
    assert fake.file_requests() == []


def test_no_network_fails_fast_with_manual_alternative(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connection refused
    base = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_ham10000(tmp_path / "ham", base_url=base)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert base + "/api/datasets/:persistentId/" in message
    assert "kaggle" in message.lower()
    assert "skinfeat data check" in message
    assert not (tmp_path / "ham").exists()


def test_silent_server_times_out(tmp_path):
    # Accepts the TCP connection (kernel backlog) but never answers.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(DownloadError, match="(?i)kaggle"):
            download_ham10000(tmp_path, base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                              timeout=0.5)
        assert time.monotonic() - start < 5
    finally:
        sock.close()


def test_zip_slip_member_is_refused(tmp_path, serve):
    fake = FakeDataverse(zip1_extra={"HAM10000_images_part_1/../../evil.txt": b"pwned"})
    dest = tmp_path / "ham"
    with pytest.raises(DownloadError, match="unsafe"):
        download_ham10000(dest, base_url=serve(fake))
    assert not (tmp_path / "evil.txt").exists()
    assert not (dest / "HAM10000_images_part_1").exists()


@pytest.mark.parametrize("member", ["/abs/evil.txt", "../evil.txt", "a/../../evil.txt"])
def test_unpack_zip_refuses_escaping_members(tmp_path, member):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip({"ok.jpg": b"x", member: b"pwned"}))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DownloadError, match="unsafe"):
        unpack_zip(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_interrupted_unpack_leftover_is_replaced(tmp_path):
    archive = tmp_path / "HAM10000_images_part_2.zip"
    archive.write_bytes(_zip({"ISIC_1.jpg": b"a", "ISIC_2.jpg": b"b"}))
    leftover = tmp_path / ".HAM10000_images_part_2.unpacking"
    leftover.mkdir()
    (leftover / "ISIC_1.jpg").write_bytes(b"trunc")
    target = unpack_zip(archive, tmp_path)
    assert target == tmp_path / "HAM10000_images_part_2"
    assert _names(target) == {"ISIC_1.jpg", "ISIC_2.jpg"}
    assert not leftover.exists()
