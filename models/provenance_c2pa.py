"""C2PA Content Credentials: read the manifest store offline and decide what it claims and whether it holds.

Reading uses c2pa-python (c2pa-rs underneath) with every network path off: no OCSP, no remote manifests, and
trust anchors only from a local PEM file. Without that file no signer can be trusted, so validity here is
about the manifest's own integrity, defined from the status codes c2pa-rs reports:

``c2pa_valid`` = 1 when
  * the active manifest's claim signature verified (``claimSignature.validated``),
  * the content binding matched (``assertion.dataHash.match``, ``boxesHash.match``, ``bmffHash.match`` or
    ``collectionHash.match``): the pixels are the ones that were signed, and
  * no failure code is reported, in the active manifest or any ingredient, other than the signer-credential
    codes in :data:`SIGNER_ONLY_FAILURES` (untrusted, expired, or a certificate outside the C2PA profile such
    as a missing EKU). Those say who signed cannot be vouched for offline; they do not say the claim or the
    pixels changed. A revoked credential is not in the list: revocation withdraws the signature itself.

c2pa-rs' own ``validation_state`` (Invalid / Valid / Trusted) is reported next to it. It is stricter on
credentials (Bing Image Creator's 2024 certificate lacks the EKU the spec now requires, so c2pa-rs says
Invalid while the signature and hashes verify). "trusted" is reported only when ``c2pa_trust_anchors`` is
configured and c2pa-rs says Trusted.

An AI claim is an action with ``digitalSourceType`` trainedAlgorithmicMedia or
compositeWithTrainedAlgorithmicMedia (IPTC IRIs), in the active manifest or in the manifest of any ingredient
(the DALL-E / ChatGPT file carries it in its parent ingredient), or a ``c2pa.created`` action whose signed
description says the image is AI generated (see :func:`_ai_description`).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from models.provenance_metadata import AI_SOURCE_TYPES, source_type_code

SIGNER_ONLY_FAILURES = {
    "signingCredential.untrusted",
    "signingCredential.expired",
    "signingCredential.invalid",
    "signingCredential.ocsp.unknown",
    "timeStamp.untrusted",
    "timeStamp.outsideValidity",
}
BINDING_MATCHES = {
    "assertion.dataHash.match",
    "assertion.boxesHash.match",
    "assertion.bmffHash.match",
    "assertion.collectionHash.match",
}
MAX_MANIFEST_DEPTH = 16  # ingredient chains followed at most this deep
# IPTC digital source types of a camera capture that may decide "NON-AI" when signed by a trusted signer.
CAPTURE_SOURCE_TYPES = {"digitalCapture", "computationalCapture"}
# C2PA 2.x standard actions that change the content (c2pa.created / opened / placed / published ... do not).
EDIT_ACTIONS = {
    "c2pa.edited",
    "c2pa.cropped",
    "c2pa.resized",
    "c2pa.color_adjustments",
    "c2pa.drawing",
    "c2pa.filtered",
    "c2pa.orientation",
    "c2pa.enhanced",
    "c2pa.placed",
    "c2pa.removed",
    "c2pa.deleted",
    "c2pa.redacted",
}


def c2pa_settings(claim_anchors_pem: str | None) -> dict[str, Any]:
    """c2pa-rs settings: nothing fetched from the network; trust only the given claim-signer anchors.

    Only claim-signer anchors are passed. c2pa-rs 0.91.3 accepts ``trust_kind`` "tsa" but then trusts claim
    signers chaining to those anchors too (measured: tests/test_provenance_trust.py), so the TSA list is not
    handed over; c2pa-rs validates RFC 3161 time-stamps on its own (``timeStamp.trusted`` without anchors).
    """
    settings: dict[str, Any] = {
        "verify": {
            "ocsp_fetch": False,
            "remote_manifest_fetch": False,
            "verify_trust": True,
            "verify_timestamp_trust": True,
        },
        "cawg_trust": {"verify_trust_list": False},
    }
    if claim_anchors_pem:
        settings["trust"] = {"anchors": [{"trust_anchors": claim_anchors_pem, "trust_kind": "manifest"}]}
    return settings


def read_c2pa(data: bytes, settings: dict[str, Any]) -> dict[str, Any]:
    """Read and judge the manifest store of ``data``. Never raises: failures come back in ``error``."""
    import c2pa

    try:
        context = c2pa.Context.from_dict(settings)
        with c2pa.Reader(None, io.BytesIO(data), context=context) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return {"present": False}
    except c2pa.C2paError.NotSupported as err:
        return {"present": False, "note": f"c2pa cannot read this format: {err}"}
    except Exception as err:  # noqa: BLE001 - a manifest that cannot be read is reported, never guessed at
        return {"present": True, "readable": False, "error": f"{type(err).__name__}: {err}"}
    return judge_store(store)


def judge_store(store: dict[str, Any]) -> dict[str, Any]:
    """Integrity verdict, AI claims and generator names of one manifest store (c2pa-rs JSON)."""
    manifests = store.get("manifests") or {}
    active_label = store.get("active_manifest")
    active = manifests.get(active_label) if isinstance(manifests, dict) else None
    if not isinstance(active, dict):
        return {"present": True, "readable": False, "error": "manifest store has no active manifest"}
    results = store.get("validation_results") or {}
    active_results = results.get("activeManifest") or {}
    success = {item.get("code") for item in active_results.get("success", [])}
    failures = [item.get("code") for item in active_results.get("failure", [])]
    for delta in results.get("ingredientDeltas", []) or []:
        failures += [item.get("code") for item in (delta.get("validationDeltas") or {}).get("failure", [])]
    if not results:  # older stores only carry the flat list of problems
        failures = [item.get("code") for item in store.get("validation_status", []) or []]
    integrity_failures = sorted({code for code in failures if code not in SIGNER_ONLY_FAILURES})
    signer_issues = sorted({code for code in failures if code in SIGNER_ONLY_FAILURES})
    signature_ok = "claimSignature.validated" in success
    binding_ok = bool(success & BINDING_MATCHES)
    valid = signature_ok and binding_ok and not integrity_failures
    state = store.get("validation_state")
    claims = _ai_claims(manifests, active_label)
    signature = active.get("signature_info") or {}
    # Trusted: c2pa-rs chained the signer to a configured anchor and reported nothing at all against it
    # (an expired or off-profile certificate is not trusted, whatever the chain).
    trusted = valid and state == "Trusted" and not signer_issues
    return {
        "present": True,
        "readable": True,
        "valid": valid,
        "trusted": trusted,
        "validation": "trusted" if trusted else "valid" if valid else "invalid",
        "c2pa_rs_state": state,
        "signature_validated": signature_ok,
        "content_binding_matched": binding_ok,
        "integrity_failures": integrity_failures,
        "signer_issues": signer_issues,
        "claim_generator": _claim_generator(active),
        "signer": signature.get("common_name") or signature.get("issuer"),
        # c2pa-rs' "issuer" is the organisation (O) of the signing certificate's subject, not its CA.
        "signer_org": signature.get("issuer"),
        "signed_at": signature.get("time"),  # from the RFC 3161 time-stamp when there is one
        "timestamped": bool(success & {"timeStamp.validated", "timeStamp.trusted"}),
        "ai_claim": bool(claims),
        "ai_claims": claims,
        "generators": _generators(claims),
        "manifests": len(manifests),
        **classify_history(manifests, active_label, claims),
    }


def classify_history(manifests: dict[str, Any], active_label: str, claims: list[dict[str, Any]]) -> dict[str, Any]:
    """What the signed history says the image is: generated, ai_edited, captured, edited or none.

    The *lineage* is the active manifest and, through ``parentOf`` ingredients, the manifests it was derived
    from: the image itself. Other ingredients (``componentOf``, ``inputTo``) are parts placed into it.
    * generated: the lineage declares trainedAlgorithmicMedia (or a signed "AI generated" created action);
    * ai_edited: any other AI claim: compositeWithTrainedAlgorithmicMedia (Photoshop's Firefly edits, i.e.
      generative fill), or an AI-made component ingredient;
    * captured: the lineage's created action declares digitalCapture / computationalCapture, no AI anywhere,
      and no editing action after it; edited: the same with editing actions, or editing without a capture;
    * none: the manifest makes no statement about the source.
    """
    lineage = {claim_label for claim_label in _walk(manifests, active_label, parents_only=True)}
    generated = any(
        c["label"] in lineage and (c["code"] == "trainedAlgorithmicMedia" or c["code"] is None) for c in claims
    )
    capture, edits = None, []
    for label in lineage:
        for action in _actions(manifests[label]):
            code = source_type_code(str(action.get("digitalSourceType") or ""))
            if action.get("action") == "c2pa.created" and code in CAPTURE_SOURCE_TYPES and capture is None:
                capture = {
                    "source_type": code,
                    "software_agent": _agent_name(action.get("softwareAgent")),
                    "claim_generator": _claim_generator(manifests[label]),
                    "when": action.get("when"),
                }
            elif action.get("action") in EDIT_ACTIONS:
                edits.append(str(action.get("action")))
    if generated:
        kind = "generated"
    elif claims:
        kind = "ai_edited"
    elif capture is not None:
        kind = "edited" if edits else "captured"
    else:
        kind = "edited" if edits else "none"
    return {"kind": kind, "capture": capture if not claims else None, "edits": sorted(set(edits))}


def _walk(manifests: dict[str, Any], active_label: str, parents_only: bool):
    """Labels of the active manifest and its ingredients' manifests (only ``parentOf`` ones if asked)."""
    queue, seen = [(active_label, 0)], set()
    while queue:
        label, depth = queue.pop(0)
        manifest = manifests.get(label)
        if label in seen or not isinstance(manifest, dict) or depth > MAX_MANIFEST_DEPTH:
            continue
        seen.add(label)
        yield label
        for ingredient in manifest.get("ingredients") or []:
            if not isinstance(ingredient, dict) or not ingredient.get("active_manifest"):
                continue
            if not parents_only or ingredient.get("relationship") == "parentOf":
                queue.append((ingredient["active_manifest"], depth + 1))


def _ai_claims(manifests: dict[str, Any], active_label: str) -> list[dict[str, Any]]:
    """AI claims of the active manifest and, through ingredients, of every manifest it was made from."""
    claims: list[dict[str, Any]] = []
    queue, seen = [(active_label, "active manifest", 0)], set()
    while queue:
        label, relation, depth = queue.pop(0)
        manifest = manifests.get(label)
        if label in seen or not isinstance(manifest, dict) or depth > MAX_MANIFEST_DEPTH:
            continue
        seen.add(label)
        for action in _actions(manifest):
            reason = _ai_reason(action, manifest)
            if reason:
                code = source_type_code(str(action.get("digitalSourceType") or ""))
                claims.append(
                    {
                        "label": label,
                        "code": code if code in AI_SOURCE_TYPES else None,
                        "manifest": relation,
                        "claim_generator": _claim_generator(manifest),
                        "action": action.get("action"),
                        "software_agent": _agent_name(action.get("softwareAgent")),
                        "reason": reason,
                    }
                )
        for ingredient in manifest.get("ingredients") or []:
            if isinstance(ingredient, dict) and ingredient.get("active_manifest"):
                relation_name = f"ingredient ({ingredient.get('relationship', 'unknown')}) manifest"
                queue.append((ingredient["active_manifest"], relation_name, depth + 1))
    return claims


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    actions = []
    for assertion in manifest.get("assertions") or []:
        if isinstance(assertion, dict) and str(assertion.get("label", "")).startswith("c2pa.actions"):
            data = assertion.get("data") or {}
            actions += [a for a in data.get("actions") or [] if isinstance(a, dict)]
    return actions


def _ai_reason(action: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    code = source_type_code(str(action.get("digitalSourceType") or ""))
    if code in AI_SOURCE_TYPES:
        return f"digitalSourceType {code}"
    if _ai_description(action):
        return f"c2pa.created described as {_description(action)!r} (no digitalSourceType)"
    return None


def _ai_description(action: dict[str, Any]) -> bool:
    """A signed ``c2pa.created`` action whose description says "AI generated".

    Microsoft's Bing Image Creator / Designer manifests (claim generator Microsoft_Responsible_AI/1.0,
    2023-24) predate the requirement to state a digitalSourceType on created actions; they say the same
    thing in words: action c2pa.created, softwareAgent "Image Creator from Designer", description "AI
    Generated Image". The description is inside the signed claim, so it is the issuer's own AI claim.
    """
    if action.get("action") != "c2pa.created":
        return False
    return bool(re.search(r"\bAI[- ]generated\b", _description(action), re.IGNORECASE))


def _description(action: dict[str, Any]) -> str:
    parameters = action.get("parameters") if isinstance(action.get("parameters"), dict) else {}
    return str(action.get("description") or parameters.get("description") or "")


def _agent_name(agent: Any) -> str | None:
    if isinstance(agent, dict):
        agent = agent.get("name")
    return str(agent) if agent else None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if manifest.get("claim_generator"):
        return str(manifest["claim_generator"])
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return str(info[0].get("name"))
    return None


def _generators(claims: list[dict[str, Any]]) -> list[str]:
    """Names of the AI tools behind the claims: software agents first, then the claim generators."""
    names: list[str] = []
    for name in [c["software_agent"] for c in claims] + [c["claim_generator"] for c in claims]:
        if name and name not in names:
            names.append(name)
    return names
