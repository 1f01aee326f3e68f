"""Encoder families behind ``--backbone``: one way to name, build and record any frozen encoder.

``--backbone`` takes:
  * a timm name (``convnext_tiny.fb_in1k``; the ``timm:`` prefix is optional);
  * ``open_clip:MODEL[:PRETRAINED]`` or ``open_clip:FOLDER`` (open_clip_config.json + weights);
  * ``hf:ORG/NAME`` or ``hf:FOLDER`` (a transformers ``save_pretrained`` folder);
  * ``local-dir:FOLDER``: any of the three folder kinds, told apart by their config files.

A folder is recorded by content (``local.folder_sha256``) under a portable name, with where it
was found as a hint (``location``) that predict uses on this machine and ``--weights-file``
re-points elsewhere (verified by hash).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ...errors import MissingFileError
from ..pooling import TIMM_POOLS
from ..weights import OFFLINE_ROUTES, WeightSource, WeightsUnavailable
from .base import FamilyEncoder
from .local import CONTENT_SUFFIXES, content_files, detect_family, folder_sha256, timm_folder_name  # noqa: F401

__all__ = ["FamilyEncoder", "BackboneRef", "parse_backbone", "resolve_backbone", "build_family",
           "family_of", "local_weight_source", "list_backbones", "installed_families",
           "RECOMMENDED", "FAMILY_PACKAGES", "DEFAULT_POOL"]

FAMILY_PACKAGES = {"timm": "timm", "open_clip": "open_clip_torch", "hf": "transformers"}
_MODULES = {"timm": "timm", "open_clip": "open_clip", "hf": "transformers"}
DEFAULT_POOL = {"timm": "avg", "open_clip": "proj", "hf": "cls"}
POOLS = {"timm": TIMM_POOLS, "open_clip": ("proj", "cls", "mean"), "hf": ("cls", "mean", "proj")}


@dataclass(frozen=True)
class BackboneRef:
    """A parsed ``--backbone``: its family, the portable name recorded, and its folder if local."""
    family: str
    name: str
    folder: Path | None = None

    @property
    def location(self) -> str | None:
        return f"local-dir:{self.folder.resolve()}" if self.folder else None


def family_of(name: str) -> str:
    """The family of a recorded backbone name (by its prefix; timm has none)."""
    for family in ("open_clip", "hf"):
        if name.startswith(family + ":"):
            return family
    return "timm"


def _folder(text: str) -> Path | None:
    text = text[len("local-dir:"):] if text.startswith("local-dir:") else text
    path = Path(text).expanduser()
    return path if path.is_dir() else None


def parse_backbone(spec: str) -> BackboneRef:
    """``--backbone`` as family, portable name and local folder."""
    if spec.startswith("local-dir:"):
        folder = _folder(spec)
        if folder is None:
            raise MissingFileError(f"--backbone {spec}: folder not found")
        family = detect_family(folder)   # "timm" only where timm_folder_name finds a name
        timm_name = timm_folder_name(folder) if family == "timm" else None
        return BackboneRef(family, timm_name or f"{family}:{folder.resolve().name}", folder)
    for family in ("open_clip", "hf"):
        if spec.startswith(family + ":"):
            rest = spec[len(family) + 1:]
            folder = _folder(rest)
            if folder is not None:
                return BackboneRef(family, f"{family}:{folder.resolve().name}", folder)
            return BackboneRef(family, spec)
    return BackboneRef("timm", spec[len("timm:"):] if spec.startswith("timm:") else spec)


def resolve_backbone(spec: str, weights: WeightSource) -> tuple[BackboneRef, WeightSource]:
    """The backbone and the weights it will really have: a folder's own weights are ``local``
    (by sha256), never "pretrained from the hub"; random weights keep the folder's config."""
    ref = parse_backbone(spec)
    if ref.folder is None and weights.kind in ("file", "local"):
        ref, weights = _weights_folder(spec, ref, weights)
    if ref.folder is not None:
        folder = str(ref.folder.resolve())
        if weights.kind == "pretrained":
            return ref, WeightSource("local", folder, folder_sha256(ref.folder))
        if weights.kind == "random":
            return ref, WeightSource("random", folder, seed=weights.seed)
    return ref, weights


def _weights_folder(spec: str, ref: BackboneRef,
                    weights: WeightSource) -> tuple[BackboneRef, WeightSource]:
    """``--weights-file`` naming a model folder, or a file inside one (config.json beside it):
    the folder's own config must shape the model (timm's default config for the name has other
    padding and normalisation: a median cosine of 0.58 to the right embeddings on MobileNetV2),
    so this is the ``local-dir:`` route; a folder for another model is refused."""
    path = Path(str(weights.file))
    folder = path if weights.kind == "local" else path.parent
    try:
        family = detect_family(folder)
    except FileNotFoundError:
        if weights.kind == "local":
            raise
        return ref, weights   # a bare checkpoint: loaded into the name's default config
    local = parse_backbone(f"local-dir:{folder}")
    if family != ref.family or (family == "timm" and
                                local.name.split(".")[0] != ref.name.split(".")[0]):
        raise WeightsUnavailable(
            f"--weights-file {path}: is {'in ' if path != folder else ''}a {family} model folder "
            f"for {local.name}, not for --backbone {spec}; pass --backbone local-dir:{folder} "
            "(the folder's own config and weights)")
    return local, weights if weights.kind == "local" else \
        WeightSource("local", str(folder.resolve()), folder_sha256(folder))


def build_family(name: str, source: WeightSource):
    """An open_clip or transformers encoder for a recorded name, or None for timm names."""
    family = family_of(name)
    if family == "timm":
        return None
    require_family(family)
    rest = name[len(family) + 1:]
    from . import hf_family, open_clip_family

    build = open_clip_family.build if family == "open_clip" else hf_family.build
    try:
        return build(rest, source.kind, source.file, source.seed)
    except Exception as exc:
        if source.kind not in ("local", "file") or isinstance(exc, OSError):
            raise
        # A folder or checkpoint that loads into a traceback: name the file or the folder.
        raise WeightsUnavailable(unloadable(Path(str(source.file)), exc)) from exc
    except OSError as exc:   # the hub unreachable, a file missing
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailable(f"{name}: weights could not be loaded ({first}); offline, "
                                 f"pass a {OFFLINE_ROUTES}, or connect once") from exc


def unloadable(where: Path, exc: BaseException) -> str:
    """One line for a model folder (or checkpoint) whose load failed: the weight file that is
    unreadable (an interrupted copy), else a config that does not fit the weights."""
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    if "ignore_mismatched_sizes" in first:   # transformers' pointer to its (silenced) report
        first = "parameter shapes differ from the config's"
    files = [where] if where.is_file() else \
        [p for p in content_files(where) if p.suffix in CONTENT_SUFFIXES]
    bad = next((p for p in files if not weights_readable(p)), None)
    if bad is not None:
        return (f"{bad}: unreadable weight file (truncated or corrupt, e.g. an interrupted "
                f"copy: {first}); copy it again")
    return (f"{where}: the model config does not fit its weights ({first}); the config and "
            "the weight files must come from one model")


def weights_readable(path: Path) -> bool:
    """Can a weight file's tensors be read (safetensors header and sizes, or torch's zip)?"""
    import torch
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():   # noqa: SIM118  (safe_open: keys() only, no __iter__)
                    f.get_slice(key)
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return True


def require_family(family: str) -> None:
    if importlib.util.find_spec(_MODULES[family]) is None:
        raise WeightsUnavailable(f"{family} encoders need {FAMILY_PACKAGES[family]}: "
                                 "pip install 'skinfeat[encoders]'")


def local_weight_source(identity: dict, weights_file: str | Path | None = None) -> WeightSource:
    """The folder a ``local`` identity was made from: ``weights_file`` (the folder, or a file in
    it) when given, else where it was found at extract time; its sha256 must match."""
    want = str((identity.get("weights") or {}).get("sha256"))
    folder: Path | None
    if weights_file is not None:
        folder = Path(weights_file)
        folder = folder if folder.is_dir() else folder.parent
    else:
        folder = _folder(str(identity.get("location") or ""))
        if folder is None:
            raise WeightsUnavailable(
                f"{identity.get('backbone')}: the local model folder it was made with "
                f"({identity.get('location')}) is not here; pass --weights-file FOLDER "
                f"(the folder where it is now: a copy with sha256 {want[:12]})")
    got = folder_sha256(folder)
    if got != want:
        raise WeightsUnavailable(f"{folder}: content sha256 {got[:12]} does not match the "
                                 f"folder the model was trained with ({want[:12]})")
    return WeightSource("local", str(folder.resolve()), got)


def installed_families() -> dict[str, str | None]:
    """Family -> installed package version (None when not installed)."""
    out: dict[str, str | None] = {}
    for family, pkg in FAMILY_PACKAGES.items():
        try:
            out[family] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[family] = None
    return out


# Recommended starting points: (backbone, family, width with the default pool, input px,
# licence of the weights, where the weights come from). Widths and sizes are the published
# configs; nothing here is downloaded until extract asks for it.
RECOMMENDED = (
    ("convnext_tiny.fb_in1k", "timm", 768, 224, "apache-2.0", "hub: timm/convnext_tiny.fb_in1k"),
    ("efficientnet_b0.ra_in1k", "timm", 1280, 224, "apache-2.0",
     "hub: timm/efficientnet_b0.ra_in1k"),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm", 768, 224, "apache-2.0",
     "hub: timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    ("vit_small_patch14_dinov2.lvd142m", "timm", 384, 518, "apache-2.0",
     "hub: timm/vit_small_patch14_dinov2.lvd142m"),
    ("open_clip:ViT-B-16:laion2b_s34b_b88k", "open_clip", 512, 224, "mit",
     "hub: laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    # OpenAI's weights were trained with QuickGELU: the -quickgelu config, or open_clip builds
    # plain GELU around them (it only warns of the mismatch).
    ("open_clip:ViT-B-16-quickgelu:openai", "open_clip", 512, 224, "mit",
     "hub: timm/vit_base_patch16_clip_224.openai (OpenAI's release)"),
    ("hf:facebook/dinov2-small", "hf", 384, 224, "apache-2.0", "hub: facebook/dinov2-small"),
    ("hf:facebook/dinov2-base", "hf", 768, 224, "apache-2.0", "hub: facebook/dinov2-base"),
    ("hf:openai/clip-vit-base-patch16", "hf", 768, 224, "mit",
     "hub: openai/clip-vit-base-patch16 (--pool proj: 512)"),
    ("local-dir:FOLDER", "any", None, None, "the folder's", "a local folder, by sha256"),
)


def list_backbones() -> list[dict]:
    """The recommended encoders, each with ``installed``: can this Python build it?"""
    have = installed_families()
    return [{"backbone": b, "family": f, "width": w, "input_size": s, "licence": lic,
             "weights": src, "pool": DEFAULT_POOL.get(f), "installed":
             have.get("timm" if f == "any" else f) is not None}
            for b, f, w, s, lic, src in RECOMMENDED]
