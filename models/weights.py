"""Where detector weights come from: a local path, an http(s) URL (cached), or a Hugging Face repo file.

One resolver for every detector, so offline mode, caching and checksums behave the same everywhere.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

import torch


class WeightsUnavailable(RuntimeError):
    """The configured weights cannot be found or fetched; the message says where we looked."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def cache_dir() -> Path:
    return Path(os.environ.get("IMGVERIFY_CACHE", Path.home() / ".cache" / "imgverify"))


def resolve_weights(location: str, sha256: str | None = None) -> Path:
    """Turn ``location`` into a local file path.

    ``location`` is a filesystem path, an ``http(s)://`` URL (downloaded once into the cache), or
    ``hf://<repo_id>/<filename>`` (through ``huggingface_hub``, which honours ``HF_HUB_OFFLINE``).
    With ``sha256`` the file is verified.
    """
    if location.startswith(("http://", "https://")):
        path = _download(location)
    elif location.startswith("hf://"):
        repo_id, _, filename = location[len("hf://") :].rpartition("/")
        path = _hf_file(repo_id, filename)
    else:
        path = Path(location).expanduser()
        if not path.exists():
            raise WeightsUnavailable(f"weights file {path} does not exist")
    if sha256 and file_sha256(path) != sha256.lower():
        raise WeightsUnavailable(f"weights file {path} does not match sha256 {sha256}")
    return path


def load_state_dict(location: str, sha256: str | None = None, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint on CPU without running pickled code (``weights_only=True``); ``.safetensors`` too."""
    path = resolve_weights(location, sha256)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if key not in state:
            raise WeightsUnavailable(f"checkpoint {path} has no key {key!r}; it has {sorted(state)[:10]}")
        state = state[key]
    return state


def _download(url: str) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    target = cache_dir() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.exists():
        return target
    if offline():
        raise WeightsUnavailable(f"{url} is not cached at {target} and HF_HUB_OFFLINE is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the location named
        raise WeightsUnavailable(f"cannot download {url}: {err}") from err
    return target


def _hf_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as err:  # noqa: BLE001 - offline, missing repo, missing file: all named here
        raise WeightsUnavailable(f"cannot get {filename} from Hugging Face repo {repo_id}: {err}") from err


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_weights_id(model_id: str) -> str:
    """Identity of Hugging Face weights for version strings: a repo id names its weights ("hub"); a local
    folder is named by the sha256 of its weight files."""
    folder = Path(model_id)
    if not folder.is_dir():
        return "hub"
    digest = hashlib.sha256()
    for weights in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")):
        digest.update(f"{weights.name}:{file_sha256(weights)}".encode())
    return f"sha256:{digest.hexdigest()[:16]}"
