"""C2PA trust anchors: the official lists shipped in ``models/trust``, plus or instead of configured ones.

A signer is *trusted* when its certificate chains to a claim-signer anchor (c2pa-rs does the path building).
The time-stamping-authority list is shipped and refreshed with it but never used as claim-signer anchors: a
TSA root (DigiCert, GlobalSign, ...) also issues ordinary certificates, and c2pa-rs 0.91.3 trusts a claim
signer that chains to an anchor of any ``trust_kind`` (measured), so handing it the TSA list would let such a
certificate sign a "trusted" manifest.

``imgverify trust update`` refreshes the shipped files from the C2PA conformance repository when online; the
service and the tests only ever read the local files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TRUST_DIR = Path(__file__).resolve().parent / "trust"
CLAIM_LIST = "C2PA-TRUST-LIST.pem"
TSA_LIST = "C2PA-TSA-TRUST-LIST.pem"
SOURCE_URL = "https://raw.githubusercontent.com/c2pa-org/conformance-public/main/trust-list/"
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class TrustAnchors:
    """The PEM text handed to c2pa-rs, and a short id that changes whenever the anchors do."""

    claim_pem: str  # claim-signer anchors; empty: no signer can be trusted
    tsa_pem: str  # time-stamping authority anchors (reported, not handed to c2pa-rs; see the module doc)
    claim_count: int
    tsa_count: int
    trust_id: str  # first 16 hex of sha256 over both; "none" without any anchor

    def summary(self) -> dict[str, object]:
        return {"claim_signer_anchors": self.claim_count, "tsa_anchors": self.tsa_count, "id": self.trust_id}


def _paths(value: str | list[str] | None) -> list[Path]:
    if not value:
        return []
    return [Path(p).expanduser() for p in ([value] if isinstance(value, str) else value)]


def _read_pem(path: Path) -> str:
    text = path.read_bytes().decode("ascii", "replace")
    if PEM_BEGIN not in text:
        raise ValueError(f"{path} holds no PEM certificate")
    return text if text.endswith("\n") else text + "\n"


def load_trust(official: bool, extra_claim: str | list[str] | None, trust_dir: Path = TRUST_DIR) -> TrustAnchors:
    """The shipped official lists (when ``official``) followed by the configured extra claim-signer PEM files."""
    claim = [trust_dir / CLAIM_LIST] if official else []
    claim_pem = "".join(_read_pem(p) for p in claim + _paths(extra_claim))
    tsa_pem = _read_pem(trust_dir / TSA_LIST) if official else ""
    digest = hashlib.sha256(f"{claim_pem}\0{tsa_pem}".encode()).hexdigest()[:16]
    return TrustAnchors(
        claim_pem,
        tsa_pem,
        claim_pem.count(PEM_BEGIN),
        tsa_pem.count(PEM_BEGIN),
        digest if claim_pem or tsa_pem else "none",
    )


# ---- imgverify trust update ------------------------------------------------------------------------------
def update(argv: list[str] | None = None) -> int:
    """Download both lists from the C2PA conformance repository into ``--dir`` (default: the shipped folder)."""
    parser = argparse.ArgumentParser(
        prog="imgverify trust update", description="Refresh the C2PA trust lists from their public source."
    )
    parser.add_argument("--dir", type=Path, default=TRUST_DIR, help="where the PEM files live")
    parser.add_argument("--source", default=SOURCE_URL, help="base URL of the trust-list folder")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    fetched: dict[str, dict[str, object]] = {}
    texts: dict[str, bytes] = {}
    for name in (CLAIM_LIST, TSA_LIST):
        url = args.source.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as response:
                body = response.read(8 * 1024 * 1024)
        except OSError as err:
            print(f"imgverify trust update: cannot fetch {url}: {err}; the local lists are unchanged")
            return 1
        count = body.decode("ascii", "replace").count(PEM_BEGIN)
        if count == 0:  # a proxy error page or a moved file must never replace a working list
            print(f"imgverify trust update: {url} holds no certificate; the local lists are unchanged")
            return 1
        texts[name] = body
        fetched[name] = {"url": url, "certificates": count, "sha256": hashlib.sha256(body).hexdigest()}
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, body in texts.items():  # written only once both downloads succeeded, each atomically
        with tempfile.NamedTemporaryFile(dir=args.dir, delete=False) as handle:
            handle.write(body)
        os.replace(handle.name, args.dir / name)
    source = {"fetched_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "files": fetched}
    (args.dir / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    for name, info in fetched.items():
        print(f"{name}: {info['certificates']} certificates, sha256 {str(info['sha256'])[:16]}...")
    return 0
