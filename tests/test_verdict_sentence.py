"""The verdict's first reasoning line: one plain sentence, true to what decided (issue 25)."""

from __future__ import annotations

import pytest

from models.base import NO_PROVENANCE, DetectorResult
from models.fusion import DetectorOutcome
from models.image_input import TRUNCATED_IMAGE
from models.verdict import Verdict, VerdictBody

LOCAL = ["provenance", "forensics", "clip_b16"]
# The shipped local fusion (it reads clip_b16_prob) with a range wide enough for confident verdicts both ways.
CONFIDENT = Verdict.build(LOCAL, "fusion_local.json", threshold=0.5, uncertain_range=(0.1, 0.9))
SHIPPED = Verdict.build(LOCAL, "fusion_local.json")
DALL_E = {
    "kind": "generated",
    "trusted": False,
    "signer": "OpenAI",
    "generator": "DALL·E",
    "source": "c2pa",
    "conflicts": [],
}


def ok(name: str, provenance: dict | None = None, hard: list[str] | None = None, **features: float) -> DetectorOutcome:
    result = DetectorResult(features=features, provenance=provenance, hard_evidence=hard or [])
    return DetectorOutcome.from_result(name, result, f"{name}-1", 1.0)


def local(clip_b16_prob: float, provenance: dict | None = None, novelty: float = 0.1, **extra) -> list:
    return [
        ok("provenance", provenance or dict(NO_PROVENANCE), **extra),
        ok("forensics", image_entropy=7.0),
        ok("clip_b16", clip_b16_prob=clip_b16_prob, clip_b16_novelty=novelty),
    ]


def first(body: dict) -> str:
    VerdictBody.model_validate(body)
    return body["reasoning"][0]


def test_a_confident_camera_photo_and_a_confident_generator_image():
    camera = CONFIDENT.decide(local(0.0))
    assert (camera["label"], camera["uncertain"]) == ("NON-AI", False)
    assert first(camera) == (
        "Looks like a camera photo: the pixel model finds no generator traces, and the file makes no provenance claim."
    )
    made = CONFIDENT.decide(local(1.0))
    assert (made["label"], made["uncertain"]) == ("AI", False)
    assert first(made) == (
        "Looks AI-generated: the pixel model finds generator traces, and the file makes no provenance claim."
    )
    assert made["reasoning"][1].startswith("clip_b16_prob = 1 points towards AI")  # the technical reasons follow


def test_uncertain_says_which_way_it_leans_and_why_it_is_not_a_finding():
    body = SHIPPED.decide(local(0.3))
    assert body["uncertain"] is True and body["label"] == "NON-AI"
    assert first(body) == (
        f"Uncertain: the pixel model leans towards a camera (P(AI) {body['fusion_prob']:.2f}), not far enough for a "
        "confident verdict, and the file makes no provenance claim."
    )
    unlike = CONFIDENT.decide(local(0.0, novelty=0.97))  # confident by fusion_prob, but unlike the training images
    assert unlike["uncertain"] is True
    assert first(unlike).startswith("Uncertain: the image is unlike the images the pixel model learnt from, so the ")


def test_a_signed_claim_decides_and_the_sentence_names_it():
    body = SHIPPED.decide(local(0.0, DALL_E, hard=["C2PA Content Credentials declare AI generation by DALL·E"]))
    assert (body["label"], body["decided_by"]) == ("AI", "hard_evidence")
    assert first(body) == (
        "Made by a generator: the file carries a signed C2PA claim from OpenAI (a signer not on the C2PA trust list) "
        "that DALL·E made it."
    )
    assert body["reasoning"][1].startswith("Provenance: C2PA Content Credentials declare AI generation")
    # Unsigned words are not proof: with hard evidence switched off, the claim is named but the pixels decide.
    off = Verdict.build(LOCAL, "fusion_local.json", threshold=0.5, uncertain_range=(0.1, 0.9), hard_evidence=False)
    body = off.decide(local(0.0, DALL_E, hard=["C2PA claim"]))
    assert first(body) == (
        "Looks like a camera photo: the pixel model finds no generator traces, and its C2PA claim ('generated') is "
        "not proof on its own."
    )


def test_missing_detectors_are_named_where_they_matter():
    failed = DetectorOutcome("clip_b16", "timeout", 30000.0, error="no answer within 30 s")
    nothing = SHIPPED.decide([ok("provenance", dict(NO_PROVENANCE)), ok("forensics", image_entropy=7.0), failed])
    assert nothing["label"] == "UNKNOWN"
    assert first(nothing) == "No verdict: none of the detectors the verdict reads answered (clip_b16 did not answer)."
    unread = DetectorOutcome("provenance", "failed", 3.0, error="boom")
    body = CONFIDENT.decide([unread, *local(0.0)[1:]])
    assert first(body) == (
        "Looks like a camera photo: the pixel model finds no generator traces, and provenance, which reads the file's "
        "own claims about its origin, did not answer."
    )


def test_the_rule_says_it_is_a_plain_average_and_names_what_did_not_answer():
    rule = Verdict.build(["debug_mean", "debug_sleep", "debug_fail"], "rule")
    body = rule.decide(
        [
            ok("debug_mean", debug_prob=0.9),
            DetectorOutcome.timed_out("debug_sleep", 0.5),
            DetectorOutcome("debug_fail", "failed", 1.0, error="boom"),
        ]
    )
    assert first(body) == (
        "Looks AI-generated: the detectors' plain average (not a calibrated model) finds generator traces "
        "(debug_sleep and debug_fail did not answer), and no enabled detector reads the file's own claims about its "
        "origin."
    )


@pytest.mark.parametrize("verdict", [CONFIDENT, SHIPPED])
def test_warnings_are_carried_and_explained_second(verdict):
    body = verdict.decide(local(0.0), [TRUNCATED_IMAGE])
    assert body["warnings"] == [TRUNCATED_IMAGE]
    assert body["reasoning"][1].startswith("The file is damaged: its data ends early (truncated_image).")
    assert verdict.decide(local(0.0))["warnings"] == []
    assert body["uncertain_range"] == list(verdict.uncertain_range) and body["threshold"] == verdict.threshold
