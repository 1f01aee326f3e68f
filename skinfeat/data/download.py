"""Download HAM10000 (and optionally the ISIC 2018 Task 3 test set) from Harvard Dataverse.

Uses only the standard library and the Dataverse native API:
``GET {base}/api/datasets/:persistentId/?persistentId=DOI`` lists the files (id, size,
checksum), ``GET {base}/api/access/datafile/{id}`` fetches one. Downloads are resumable
(``NAME.part`` + HTTP Range), verified against the listed size and checksum, then renamed
into place; zips are unpacked into the Kaggle-like layout the reader expects.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError, SkinfeatError

log = logging.getLogger(__name__)

DATAVERSE_DOI = "doi:10.7910/DVN/DBW86T"
DEFAULT_BASE_URL = "https://dataverse.harvard.edu"
KAGGLE_URL = "https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000"
HAM10000_STEMS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_metadata")
ISIC2018_TEST_STEMS = ("ISIC2018_Task3_Test_Images", "ISIC2018_Task3_Test_GroundTruth")
_CHUNK = 1 << 20
# Dataverse writes checksum.type as "MD5", "SHA-1", "SHA-256" or "SHA-512".
_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}

ProgressFn = Callable[[str, int, int | None], None]


class DownloadError(SkinfeatError, RuntimeError):
    """Raised when the data cannot be fetched, verified or unpacked."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the Dataverse dataset, as we will save it locally."""

    name: str  # local file name (the original name for ingested tabular files)
    file_id: int
    size: int | None
    checksum_type: str | None
    checksum: str | None
    original: bool  # ingested tabular file: fetch the uploaded original, not the .tab

    def url(self, base_url: str) -> str:
        url = f"{base_url.rstrip('/')}/api/access/datafile/{self.file_id}"
        return url + "?format=original" if self.original else url


def _manual_hint(dest: Path | None) -> str:
    where = str(dest) if dest is not None else "DIR"
    return (
        "To get the data by hand, download the Kaggle archive "
        f"'kmader/skin-cancer-mnist-ham10000' ({KAGGLE_URL}) or the files from "
        f"https://doi.org/{DATAVERSE_DOI[4:]}, unzip them into {where}, "
        f"then run `skinfeat data check {where}`."
    )


def _network_error(url: str, reason: object, dest: Path | None) -> DownloadError:
    return DownloadError(f"Could not download {url}: {reason}. {_manual_hint(dest)}")


def _open(url: str, timeout: float, dest: Path | None,
          headers: dict | None = None) -> http.client.HTTPResponse:
    """urlopen that turns every network failure into one DownloadError naming the URL."""
    req = urllib.request.Request(url, headers={"User-Agent": "skinfeat", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _network_error(url, f"HTTP {exc.code} {exc.reason}", dest) from exc
    except urllib.error.URLError as exc:  # refused, DNS failure, connect timeout
        raise _network_error(url, exc.reason, dest) from exc
    except (OSError, http.client.HTTPException) as exc:  # read timeout, reset
        raise _network_error(url, exc, dest) from exc


def _stem(name: str) -> str:
    for suffix in (".zip", ".tab", ".csv", ".tsv", ".txt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_dataset_files(
    *, with_isic2018_test: bool = False, base_url: str = DEFAULT_BASE_URL,
    timeout: float = 10.0, dest: Path | None = None,
) -> list[RemoteFile]:
    """Ask Dataverse for the file listing and pick the files we need (dest: for messages)."""
    url = f"{base_url.rstrip('/')}/api/datasets/:persistentId/?persistentId={DATAVERSE_DOI}"
    with _open(url, timeout, dest) as resp:
        try:
            payload = json.loads(resp.read().decode("utf-8"))
            entries = payload["data"]["latestVersion"]["files"]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise _network_error(url, f"unexpected answer ({exc!r})", dest) from exc
    wanted = HAM10000_STEMS + (ISIC2018_TEST_STEMS if with_isic2018_test else ())
    found: dict[str, RemoteFile] = {}
    for entry in entries:
        df = entry.get("dataFile", {})
        listed = df.get("filename") or entry.get("label", "")
        # Dataverse ingests tabular uploads and lists them as NAME.tab; the uploaded
        # original (whose size/checksum are the ones listed) needs ?format=original.
        ingested = bool(df.get("originalFileFormat") or df.get("originalFileName")
                        or listed.endswith(".tab"))
        name = df.get("originalFileName") or (_stem(listed) if ingested else listed)
        if _stem(name) not in wanted or _stem(name) in found:
            continue
        # Older Dataverse versions only give "md5"; newer ones give checksum {type, value}.
        checksum = df.get("checksum") or {"type": "MD5", "value": df.get("md5")}
        found[_stem(name)] = RemoteFile(
            name=name, file_id=int(df["id"]),
            size=df.get("originalFileSize") if ingested else df.get("filesize"),
            checksum_type=checksum.get("type"), checksum=checksum.get("value"),
            original=ingested,
        )
    missing = [s for s in wanted if s not in found]
    if missing:
        raise DownloadError(f"{url} does not list {', '.join(missing)}. {_manual_hint(dest)}")
    return [found[s] for s in wanted]


def _file_ok(path: Path, rf: RemoteFile) -> bool:
    """True when path has the listed size and checksum (unknown ones are not checked)."""
    if rf.size is not None and path.stat().st_size != rf.size:
        return False
    algo = _HASHES.get((rf.checksum_type or "").upper())
    if not (algo and rf.checksum):
        if rf.checksum:
            log.warning("unknown checksum type %r for %s; not verified", rf.checksum_type, rf.name)
        return True
    digest = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest().lower() == rf.checksum.lower()


def _local_candidates(dest: Path, rf: RemoteFile) -> list[Path]:
    # An extension-less table may have been renamed to .csv after download.
    names = [rf.name] + ([rf.name + ".csv"] if "." not in rf.name else [])
    return [dest / n for n in names]


def _download(rf: RemoteFile, dest: Path, base_url: str, timeout: float,
              progress: ProgressFn | None) -> Path:
    """Fetch one file into NAME.part (resuming), verify it, rename it into place."""
    url, final, part = rf.url(base_url), dest / rf.name, dest / (rf.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if rf.size is not None and offset > rf.size:
        offset = 0  # stale .part from another version; start over
    if rf.size is None or offset < rf.size:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = _open(url, timeout, dest, headers)
        with resp:
            if offset and resp.status != 206:
                log.info("%s: server ignored the Range request; restarting from zero", rf.name)
                offset = 0
            elif offset:
                start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
                if start != str(offset):
                    part.unlink()
                    raise DownloadError(f"{url}: bad Content-Range for resume; run again")
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length else rf.size
            done = offset
            log.info("downloading %s (%s bytes, from byte %d)", url, total, offset)
            if progress:
                progress(rf.name, done, total)
            with open(part, "ab" if offset else "wb") as fh:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _network_error(url, f"transfer interrupted ({exc}); "
                                             "run again to resume", dest) from exc
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(rf.name, done, total)
            if total is not None and done < total:
                # http.client returns b"" (no error) when the server closes early.
                raise _network_error(url, f"connection closed after {done} of {total} "
                                     "bytes; run again to resume", dest)
    if not _file_ok(part, rf):
        part.unlink()
        raise DownloadError(
            f"{url}: downloaded {rf.name} does not match the size/{rf.checksum_type} "
            f"checksum listed by Dataverse (deleted it; run again). {_manual_hint(dest)}")
    os.replace(part, final)  # atomic: a final name always means a verified file
    return final


def _name_table(path: Path) -> Path:
    """Give an extension-less table the .csv suffix only when it is comma-separated."""
    if path.suffix:
        return path
    with open(path, "rb") as fh:
        first = fh.readline()
    if b"," in first and b"\t" not in first:
        os.replace(path, path.with_name(path.name + ".csv"))
        return path.with_name(path.name + ".csv")
    return path  # tab-separated: the reader sniffs it, keep the original name


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]))


def unpack_zip(archive: Path, dest: Path) -> Path:
    """Unpack archive into dest/<top folder> (or dest/<zip stem> if it has none).

    Extracts into a hidden temp folder first and renames it at the end, so an interrupted
    unpack never leaves a folder that looks complete. Refuses members escaping dest.
    """
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
        bad = [m.filename for m in members if not _safe_member(m.filename)]
        if bad:
            raise DownloadError(f"{archive}: refusing unsafe zip member(s) {bad[:3]} "
                                "(paths escaping the destination)")
        tops = {m.filename.split("/", 1)[0] for m in members}
        nested = len(tops) == 1 and all("/" in m.filename for m in members)
        target = dest / (tops.pop() if nested else archive.stem)
        if target.exists():
            log.info("%s already unpacked", target)
            return target
        tmp = dest / f".{archive.stem}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of an interrupted run
        tmp.mkdir(parents=True)
        for member in members:
            zf.extract(member, tmp)
    os.replace(tmp / target.name if nested else tmp, target)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("unpacked %s -> %s", archive.name, target)
    return target


def unpack(root: str | Path) -> list[tuple[Path, Path]]:
    """Extract the dataset zips in ``root`` in place: (zip, folder) per archive; none is an
    error."""
    zips = sorted(Path(root).glob("*.zip"))
    if not zips:
        raise InputError(f"{root}: no .zip files to unpack")
    return [(z, unpack_zip(z, Path(root))) for z in zips]


def download_ham10000(
    dest: Path, *, with_isic2018_test: bool = False, base_url: str = DEFAULT_BASE_URL,
    timeout: float = 10.0, progress: ProgressFn | None = None,
) -> Path:
    """Download, verify and unpack HAM10000 into dest; returns dest.

    Safe to rerun: verified files are skipped, partial ones resumed, unpacked folders kept.
    Raises DownloadError (with the manual Kaggle/Dataverse alternative) on any failure.
    """
    dest = Path(dest)
    files = list_dataset_files(with_isic2018_test=with_isic2018_test,
                               base_url=base_url, timeout=timeout, dest=dest)
    dest.mkdir(parents=True, exist_ok=True)  # only once the listing worked
    local: list[Path] = []
    for rf in files:
        have = next((p for p in _local_candidates(dest, rf) if p.exists()), None)
        if have is not None and _file_ok(have, rf):
            log.info("%s already present and verified; skipping", have.name)
            local.append(have)
            continue
        if have is not None:
            log.warning("%s does not match the listed checksum; downloading again", have.name)
            have.unlink()
        local.append(_download(rf, dest, base_url, timeout, progress))
    for path in local:
        if path.suffix.lower() == ".zip":
            unpack_zip(path, dest)
        else:
            _name_table(path)
    return dest
