"""The serving graph over HTTP, on a real local Ray Serve shared by the whole session (see conftest).

``/`` runs the local offline profile (serve_config.local.yaml); ``/faulty`` runs debug detectors of
which one times out and one raises.
"""

from __future__ import annotations

import base64
import copy
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import image_bytes
from serve_app.local import deploy_apps
from serve_app.responses import ServiceVerdict

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=120) as http:
        yield http


def post_file(client: httpx.Client, data: bytes, path: str = "/v1/detect", **params) -> httpx.Response:
    return client.post(path, files={"file": ("upload", data)}, params=params)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_the_session_serves_through_the_shipped_ingress(client, serve_url):
    """HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1, as the quickstart, the image and KubeRay run it) binds the session's
    port and answers; with the variable at 0 no HAProxy binds it (Serve's Python proxy does)."""
    import os
    from pathlib import Path

    assert client.get("/healthz").status_code == 200
    port = serve_url.rsplit(":", 1)[1]
    configs = []  # the config file of every running HAProxy: `haproxy ... -f CONFIG ...`
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended meanwhile
            continue
        if args[0].endswith("haproxy") and "-f" in args:
            configs.append(Path(args[args.index("-f") + 1]))
    binding = [c for c in configs if c.exists() and f"bind 127.0.0.1:{port}\n" in c.read_text()]
    assert len(binding) == (1 if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else 0), configs


def test_camera_photo_gets_a_full_explained_verdict(client, fixtures):
    response = post_file(client, (fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg").read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    ServiceVerdict.model_validate(body)  # the declared response shape (/docs) is the one served
    assert set(body["detectors"]) == {"provenance", "forensics", "clip_b16"}
    assert all(d["status"] == "ok" and d["version"] and d["latency_ms"] > 0 for d in body["detectors"].values())
    assert body["missing"] == []
    # Features of every detector at top level, with their declared names.
    for feature in (
        "exif_score",
        "has_exif",
        "c2pa_present",
        "image_entropy",
        "compression_level",
        "clip_b16_prob",
        "clip_b16_pub_prob",
        "clip_b16_novelty",
    ):
        assert isinstance(body[feature], float), feature
    assert body["has_exif"] == 1.0 and body["c2pa_present"] == 0.0
    assert 0.0 <= body["fusion_prob"] <= 1.0
    assert body["label"] == ("AI" if body["fusion_prob"] >= body["threshold"] else "NON-AI")
    assert body["decided_by"] == "fusion"
    assert body["reasoning"] and all(isinstance(r, str) for r in body["reasoning"])
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["image"]["width"] == 600 and body["image"]["height"] == 900
    assert body["timings"]["total_ms"] >= body["timings"]["detectors_ms"] > 0


def test_c2pa_ai_claim_decides_the_verdict(client, fixtures):
    body = post_file(client, (fixtures / "c2pa" / "ai" / "DALL-E_cloud_surfing_puppy.webp").read_bytes()).json()
    assert body["label"] == "AI" and body["decided_by"] == "hard_evidence" and body["uncertain"] is False
    assert body["c2pa_ai_claim"] == 1.0
    assert any("C2PA" in reason or "c2pa" in reason for reason in body["reasoning"])
    assert body["provenance"] == {
        "kind": "generated",
        "trusted": False,
        "signer": "OpenAI",
        "generator": "DALL·E",
        "source": "c2pa",
        "conflicts": [],
    }


def test_the_three_ways_to_send_an_image_agree(client, data_set):
    data = (data_set("imagenet-real") / "real").glob("*.JPEG").__next__().read_bytes()
    multipart = post_file(client, data).json()
    as_json = client.post("/v1/detect", json={"image_b64": base64.b64encode(data).decode()}).json()
    raw = client.post("/v1/detect", content=data, headers={"content-type": "image/jpeg"}).json()
    assert multipart["fusion_prob"] == as_json["fusion_prob"] == raw["fusion_prob"]
    assert multipart["image"]["sha256"] == as_json["image"]["sha256"] == raw["image"]["sha256"]


def test_artifacts_are_base64_pngs_of_the_image_size(client, fixtures):
    body = post_file(
        client, (fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg").read_bytes(), artifacts="true"
    ).json()
    assert body["artifacts"], "expected at least one heatmap"
    for artifact in body["artifacts"].values():
        for key in ("heatmap_png_base64", "overlay_png_base64"):
            png = Image.open(io.BytesIO(base64.b64decode(artifact[key])))
            assert png.format == "PNG" and png.size == (600, 900)
    assert "artifacts" not in post_file(client, image_bytes("PNG", size=(64, 64))).json()


BAD_INPUTS = {
    "empty body": (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty_input"),
    "not an image": (dict(files={"file": ("x.jpg", b"hello, world" * 10)}), 415, "not_an_image"),
    "truncated jpeg": (
        dict(files={"file": ("t.jpg", image_bytes("JPEG", size=(256, 256), quality=95)[:9000])}),
        400,
        "truncated_image",
    ),
    "over the byte limit": (
        dict(content=b"\0" * (33 * 1024 * 1024), headers={"content-type": "image/png"}),
        413,
        "too_large",
    ),
    "over the pixel limit": (
        dict(files={"file": ("bomb.png", encode(Image.new("L", (8000, 8000)), "PNG"))}),
        413,
        "too_many_pixels",
    ),
    "unsupported format": (
        dict(files={"file": ("x.ico", encode(Image.new("RGB", (16, 16)), "ICO"))}),
        415,
        "unsupported_format",
    ),
    "wrong multipart field": (dict(files={"image": ("x.png", image_bytes())}), 422, "missing_file"),
    "invalid base64": (dict(json={"image_b64": "not base64 !!"}), 400, "invalid_base64"),
    "invalid json": (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json"),
    "json without an image": (dict(json={"picture": "x"}), 422, "missing_image"),
    "url while disabled": (dict(json={"url": "https://example.com/a.jpg"}), 403, "url_input_disabled"),
    "unsupported content type": (
        dict(content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_content_type",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(client, case):
    request, status, code = BAD_INPUTS[case]
    response = client.post("/v1/detect", **request)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["detail"]


GOOD_ODD_INPUTS = {
    "1x1 png": image_bytes("PNG", size=(1, 1)),
    "animated gif": encode(
        Image.new("RGB", (64, 64), (200, 10, 10)), "GIF", save_all=True, append_images=[Image.new("RGB", (64, 64))] * 2
    ),
    "cmyk jpeg": encode(Image.new("CMYK", (64, 64), (0, 200, 200, 0)), "JPEG"),
    "16-bit png": encode(Image.fromarray(np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)), "PNG"),
    "rgba png": image_bytes("PNG", size=(64, 64), mode="RGBA"),
}


@pytest.mark.parametrize("case", list(GOOD_ODD_INPUTS))
def test_odd_but_valid_images_get_a_result(client, case):
    response = post_file(client, GOOD_ODD_INPUTS[case])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in ("AI", "NON-AI") and body["detectors"]["provenance"]["status"] == "ok"
    # A detector that cannot use an image this small says so; it is never given a made-up score.
    for name in body["missing"]:
        assert body["detectors"][name]["status"] in ("skipped", "failed") and body["detectors"][name]["error"]


def test_service_is_still_healthy_after_bad_input(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_batch_endpoint_keeps_order_and_isolates_a_bad_file(client, fixtures):
    good = (fixtures / "camera-models" / "real" / "Canon_EOS_7D.jpg").read_bytes()
    files = [("files", ("a.jpg", good)), ("files", ("b.txt", b"not an image")), ("files", ("c.png", image_bytes()))]
    response = client.post("/v1/detect/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.jpg", "b.txt", "c.png"]
    assert results[0]["label"] in ("AI", "NON-AI") and results[2]["label"] in ("AI", "NON-AI")
    assert results[1]["error"] == "not_an_image"
    single = post_file(client, good).json()
    assert results[0]["fusion_prob"] == single["fusion_prob"]


def test_detectors_endpoint_lists_features_versions_and_status(client):
    body = client.get("/v1/detectors").json()
    assert set(body["detectors"]) == {"provenance", "forensics", "clip_b16"}
    for info in body["detectors"].values():
        assert info["status"] == "ready" and info["version"] and info["features"]
        assert {"name", "low", "high", "direction", "description"} <= set(info["features"][0])
    assert body["fusion"]["model"] and 0 < body["fusion"]["threshold"] < 1
    config = client.get("/v1/config").json()["fusion"]
    assert body["fusion"]["threshold"] == config["threshold"]
    # The trained, calibrated fusion decides; each detector says whether it reads it (the same in every verdict).
    described = (body["fusion"]["kind"], body["fusion"]["calibrated"])
    assert described == (config["kind"], config["calibrated"]) == ("trained", True)
    roles = {name: info["role"] for name, info in body["detectors"].items()}
    assert roles == body["fusion"]["detectors"] and roles["provenance"] == "hard evidence"
    assert "fusion input" in roles.values()
    assert client.get("/docs").status_code == 200


def test_openapi_documents_the_verdict_and_the_error_shapes(client):
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/v1/detect"]["post"]["responses"]

    def schema(response: dict) -> dict:
        return spec["components"]["schemas"][
            response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        ]

    verdict = schema(responses["200"])
    assert {
        "fusion_prob",
        "label",
        "threshold",
        "uncertain",
        "decided_by",
        "reasoning",
        "provenance",
        "detectors",
        "missing",
        "details",
        "fusion_model",
        "request_id",
        "image",
        "timings",
    } <= set(verdict["properties"])
    assert set(schema(responses["413"])["properties"]) == {"error", "detail", "request_id"}
    assert "results" in schema(spec["paths"]["/v1/detect/batch"]["post"]["responses"]["200"])["properties"]


# ---- failures and timeouts -------------------------------------------------------------------------
def test_a_failing_and_a_slow_detector_are_missing_while_the_rest_answer(client):
    body = post_file(client, image_bytes("PNG", size=(32, 32)), path="/faulty/v1/detect").json()
    assert body["detectors"]["debug_mean"]["status"] == "ok"
    assert (
        body["detectors"]["debug_fail"]["status"] == "failed"
        and "always fails" in body["detectors"]["debug_fail"]["error"]
    )
    assert body["detectors"]["debug_sleep"]["status"] == "timeout"
    assert sorted(body["missing"]) == ["debug_fail", "debug_sleep"]
    # The rule fusion (asked for by name in this app) averages the probabilities that exist: debug_prob alone,
    # nothing invented; and the verdict says that an uncalibrated mean decided.
    assert body["fusion_prob"] == pytest.approx(body["debug_prob"], abs=1e-6)
    assert "debug_sleep_prob" not in body and "debug_fail_prob" not in body
    assert body["decided_by"] == "rule"
    assert any("plain mean of the probabilities present (debug_prob)" in r for r in body["reasoning"])
    assert client.get("/faulty/v1/config").json()["fusion"]["kind"] == "rule"
    assert client.get("/faulty/healthz").status_code == 200


def test_url_input_refuses_other_schemes_and_private_targets(client, serve_url):
    refused = {
        "ftp://example.com/a.jpg": "url_scheme_refused",
        f"{serve_url}/healthz": "url_address_refused",  # loopback
        "http://169.254.169.254/latest/meta-data/": "url_address_refused",  # link-local (cloud metadata)
        "http://10.0.0.1/a.jpg": "url_address_refused",  # private
    }
    for url, code in refused.items():
        response = client.post("/faulty/v1/detect", json={"url": url})
        assert 400 <= response.status_code < 500 and response.json()["error"] == code, (url, response.text)


def test_reconfigure_swaps_detector_settings_without_a_restart(client, serve_apps):
    before = client.get("/faulty/v1/detectors").json()["detectors"]["debug_mean"]
    changed = copy.deepcopy(serve_apps["applications"])
    for deployment in changed[1]["deployments"]:
        if deployment["name"] == "debug_mean":
            deployment["user_config"] = {"max_batch_size": 4, "detector": {"busy_ms": 1.0}}
    deploy_apps(changed)
    deadline = time.time() + 120  # the controller applies a new user_config asynchronously
    while (after := client.get("/faulty/v1/detectors").json()["detectors"]["debug_mean"])["version"] == before[
        "version"
    ]:
        assert time.time() < deadline, "reconfigure never took effect"
        time.sleep(0.5)
    assert before["version"] == "debug_mean-1 busy_ms=0.0" and after["version"] == "debug_mean-1 busy_ms=1.0"
    assert after["batching"]["max_batch_size"] == 4
    assert after["replica"] == before["replica"], "user_config changes must not restart the replica"
    deploy_apps(serve_apps["applications"])
