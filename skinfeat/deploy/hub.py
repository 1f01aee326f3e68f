"""Model bundles on the Hugging Face Hub: ``load_model("org/name")`` fetches the repository's
snapshot (``huggingface_hub.snapshot_download``: cached, and offline with ``HF_HUB_OFFLINE=1``
once cached) and loads it as a run folder. A run folder is uploaded as it is
(``huggingface_hub.upload_folder``): its README.md is the model card the Hub reads."""
from __future__ import annotations

import re
from pathlib import Path

from .bundle_config import BundleError

# owner/name, optionally @revision (a branch, tag or commit)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def bundle_folder(path: str | Path) -> Path:
    """``path`` when it exists or cannot be a Hub repo id; else the Hub snapshot of that repo."""
    if Path(path).exists() or not REPO_ID.fullmatch(str(path)):
        return Path(path)
    from huggingface_hub import snapshot_download

    repo, _, revision = str(path).partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None))
    except Exception as exc:  # offline and not cached, no such repo, no access: the hub's reason
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{path}: no such folder, and not a model on the Hugging Face Hub "
                          f"that can be fetched ({reason})") from exc
