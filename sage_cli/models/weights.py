"""Pretrained weights as users expect them: a tag is fetched once, into the library's own cache.

``backbone.pretrained`` is a local file, or a tag: open_clip's (``openai``, ``laion2b_s34b_b88k``, … for the
CLIP towers, from the Hugging Face hub into its cache, as ``open_clip.create_model`` would) or torchvision's
(``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``; ``imagenet`` = ``IMAGENET1K_V1``, DomainBed's
``resnet50(pretrained=True)``, into torch.hub's cache with torchvision's hash check). :func:`prepare` runs
before any MLflow run exists: it downloads what is missing when the machine is online, and otherwise
fails in one line naming the tag, the cache folder and where to put the file. Builders then load from the
cache only (:func:`local_file`), so training never reaches for the network.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
TORCHVISION_ALIASES = {"imagenet": "IMAGENET1K_V1"}


@dataclass
class Weights:
    spec: str  # what the recipe says
    file: Path
    downloaded: bool
    source: str  # "file" | "cache" | "download"
    quick_gelu: bool = False  # open_clip's OpenAI weights were trained with QuickGELU

    def sha256(self) -> str:
        from ..data.fetch import sha256_of

        return sha256_of(self.file)

    def tags(self) -> dict[str, str]:
        return {"sage.weights": self.spec, "sage.weights_file": str(self.file), "sage.weights_sha256": self.sha256(),
                "sage.weights_downloaded": str(self.downloaded).lower()}

    def line(self) -> str:
        where = {"file": "from", "cache": "from the cache", "download": "downloaded to"}[self.source]
        return f"weights: {self.spec} {where} {self.file}"


def is_path(value: str) -> bool:
    return value.endswith(WEIGHT_SUFFIXES) or os.sep in value or value.startswith(("~", "."))


def local(value: str, what: str) -> Weights:
    file = Path(value).expanduser()
    if not file.is_file():
        raise UserError(f"{what} weights file {file} does not exist")
    return Weights(value, file, False, "file")


def online(url: str, timeout: float = 5.0) -> bool:
    """Whether ``url``'s host answers a TCP connection (DNS failure, no route: at once, not after retries)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ---- open_clip ------------------------------------------------------------------------------------------

def hf_cache() -> Path:
    """huggingface_hub's cache folder, read now (its module constant is fixed at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def _clip_files(cfg: dict) -> tuple[str, list[str]]:
    repo, filename = os.path.split(cfg["hf_hub"])  # 'org/name/file', or 'org/name/' for the default file
    filename = filename or "open_clip_pytorch_model.bin"
    stem = filename.rsplit(".", 1)[0]
    safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else f"{stem}.safetensors"
    return repo, [safe, filename]  # open_clip prefers the safetensors file where the repository has one


def clip_weights(arch: str, tag: str, download: bool) -> Weights:
    import open_clip

    if is_path(tag):
        return local(tag, "CLIP")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise UserError(f"'{tag}' is not an open_clip tag for {arch} (known: {known}); or give a weights file")
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if not cfg.get("hf_hub"):  # an entry with a plain URL: open_clip keeps it in ~/.cache/clip
        url = cfg["url"]
        file = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if file.is_file():
            return Weights(tag, file, False, "cache", quick_gelu)
        _require_online(download, url, f"CLIP weights '{tag}' for {arch}", file.parent, f"download {url} into {file.parent}")
        from ..data.fetch import socket_timeout

        try:
            with socket_timeout():  # open_clip's urllib download has no timeout of its own
                got = open_clip.pretrained.download_pretrained_from_url(url, str(file.parent))
        except OSError as exc:
            raise UserError(f"cannot download CLIP weights '{tag}' for {arch} from {url} ({exc})") from None
        return Weights(tag, Path(got), True, "download", quick_gelu)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, files = _clip_files(cfg)
    cache = hf_cache()
    for name in files:
        hit = try_to_load_from_cache(repo, name, cache_dir=str(cache))
        if isinstance(hit, str):
            return Weights(tag, Path(hit), False, "cache", quick_gelu)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    where = f"{endpoint}/{repo}/resolve/main/{files[-1]}"
    _require_online(download, endpoint, f"CLIP weights '{tag}' for {arch}", cache,
                    f"download {where} and set backbone.pretrained to the file", "HF_HUB_OFFLINE")
    last = None
    for name in files:
        try:
            return Weights(tag, Path(hf_hub_download(repo, name, cache_dir=str(cache), endpoint=endpoint)), True,
                           "download", quick_gelu)
        except Exception as exc:  # the hub's errors: missing file (try the other name), network, auth
            last = exc
    raise UserError(f"cannot download CLIP weights '{tag}' for {arch} from {endpoint}/{repo} "
                    f"({type(last).__name__}); download {where} and set backbone.pretrained to its path")


# ---- torchvision ----------------------------------------------------------------------------------------

def torch_cache() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def resnet_weights(tag: str, download: bool) -> Weights:
    if is_path(tag):
        return local(tag, "ResNet")
    from torchvision.models import ResNet50_Weights

    name = TORCHVISION_ALIASES.get(tag, tag)
    try:
        entry = ResNet50_Weights[name]
    except KeyError:
        known = ", ".join([w.name for w in ResNet50_Weights] + ["DEFAULT", *TORCHVISION_ALIASES])
        raise UserError(f"'{tag}' is not a torchvision tag for resnet50 (known: {known}); or give a weights file") from None
    url = entry.url
    file = torch_cache() / os.path.basename(url)
    if file.is_file():
        return Weights(tag, file, False, "cache")
    from ..data.fetch import mirror, socket_timeout

    base = mirror()
    source = f"{base}/{file.name}" if base else url
    _require_online(download, source, f"ResNet-50 weights '{tag}'", file.parent, f"download {url} into {file.parent}")
    import torch

    file.parent.mkdir(parents=True, exist_ok=True)
    prefix = torch.hub.HASH_REGEX.search(file.name)
    try:  # torchvision's file names carry the first hex digits of their SHA-256; torch.hub checks them
        with socket_timeout():  # torch.hub's urlopen has no timeout: a stalled mirror would hang the run
            torch.hub.download_url_to_file(source, str(file), hash_prefix=prefix.group(1) if prefix else None)
    except RuntimeError as exc:  # the hash check
        raise UserError(f"ResNet-50 weights '{tag}' from {source} failed torchvision's checksum ({exc}); "
                        "nothing was kept") from None
    except OSError as exc:
        raise UserError(f"cannot download ResNet-50 weights '{tag}' from {source} ({exc})") from None
    return Weights(tag, file, True, "download")


def _require_online(download: bool, url: str, what: str, cache: Path, fix: str, off_switch: str = "") -> None:
    if not download:
        why = "sage downloads weights only before a run starts"
    elif off_switch and _env_true(off_switch):
        why = f"downloads are off ({off_switch})"
    elif not online(url):
        why = f"{urlsplit(url).netloc} cannot be reached"
    else:
        return
    raise UserError(f"{what} are not in the cache {cache} and {why}: {fix}")


# ---- what the runner and the builders call ---------------------------------------------------------------

RESOLVERS = {"clip": lambda cfg, download: clip_weights(cfg.model or "ViT-B-16", cfg.pretrained, download),
             "resnet50": lambda cfg, download: resnet_weights(cfg.pretrained, download)}


def prepare(cfg) -> Weights | None:
    """The backbone's weights, downloaded now if missing and the machine is online (None: random init)."""
    resolver = RESOLVERS.get(cfg.name)
    if resolver is None or not getattr(cfg, "pretrained", None):
        return None
    return resolver(cfg, True)


def local_file(cfg) -> Weights:
    """The weights a builder loads: from a file or the cache, never the network."""
    return RESOLVERS[cfg.name](cfg, False)
