"""Typed arguments of the imgverify application (``build_app(args)``), and reading a Serve config file.

``serve_config*.yaml`` is a standard Ray Serve config: the application's ``args`` validate as
:class:`AppArgs`; each detector's deployment (named after the detector) takes its replicas, autoscaling,
``ray_actor_options`` and ``user_config`` (batching and detector settings) from the ``deployments`` list.
Batch scoring reads the same file through :func:`load_profile`, so both ways in run the same setup.

It lives in ``deployments/`` because everything above reads it (the detector deployment, the ingress, batch
scoring, training) and it reads only ``models/``: imports point one way, down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator

from models.fusion import (
    NO_FUSION_MESSAGE,
    RULE,
    FusionNotConfigured,
    SchemaMismatch,
    artifact_features,
    unrun_detectors,
)
from models.image_input import InputLimits
from models.verdict import Verdict


class DetectorArgs(BaseModel):
    """One enabled detector. Its deployment has the same name."""

    name: str
    timeout_s: float = Field(30.0, gt=0, description="per-request time the ingress waits for this detector")


class InputArgs(BaseModel):
    """Limits on what callers may send."""

    max_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_pixels: int = Field(50_000_000, gt=0)
    min_side: int = Field(1, ge=1)
    max_batch_files: int = Field(16, ge=1, description="files per POST /v1/detect/batch")
    allow_url: bool = Field(False, description="accept {'url': ...}; off by default (server-side fetch)")
    url_timeout_s: float = Field(10.0, gt=0)
    url_max_redirects: int = Field(3, ge=0)

    def limits(self) -> InputLimits:
        return InputLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels, min_side=self.min_side)


class FusionArgs(BaseModel):
    """The fusion model and how its probability becomes a label."""

    model: str | None = Field(
        None,
        description="a trained fusion artifact (path, or file name in models/weights), or 'rule' (the uncalibrated "
        "mean of the calibrated probabilities, asked for explicitly); unset is refused (load_profile, build_app)",
    )
    threshold: float | None = Field(None, ge=0, le=1, description="override the model's threshold")
    uncertain_range: tuple[float, float] | None = Field(
        None, description="override the model's [low, high) range of fusion_prob reported as uncertain"
    )
    hard_evidence: bool = Field(True, description="valid C2PA AI claims, generator metadata, watermarks decide alone")

    @field_validator("uncertain_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"uncertain_range {value} must be [low, high] with 0 <= low <= high <= 1")
        return value


class ApiKeyArgs(BaseModel):
    """One accepted API key, by the hex sha256 of the key (the key itself is never in the config)."""

    sha256: str = Field(description="hex sha256 of the key: `printf %s KEY | sha256sum`")
    name: str | None = Field(None, description="who holds it; logged instead of the key")
    requests_per_minute: float | None = Field(
        None, gt=0, description="this key's rate; None: access.requests_per_minute"
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("sha256 must be 64 hex digits (the sha256 of the key, not the key)")
        return value


class AccessArgs(BaseModel):
    """API keys and per-key rate limits (serve_app/auth.py). Off unless a key is configured here or in the
    environment variable named by ``keys_env`` (raw keys, comma-separated, in the ingress replicas' env)."""

    api_keys: list[ApiKeyArgs] = Field(
        default_factory=list, description="accepted keys (sha256); a bare string is a sha256"
    )
    keys_env: str = Field("IMGVERIFY_API_KEYS", description="env var with raw keys, comma-separated")
    requests_per_minute: float | None = Field(None, gt=0, description="per key, token bucket; None: no rate limit")
    burst: float | None = Field(None, ge=1, description="bucket size; None: 10 s of the rate (at least 1)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _bare_hashes(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"sha256": v} if isinstance(v, str) else v for v in value]
        return value


class AdmissionArgs(BaseModel):
    """Backpressure in each ingress replica (serve_app/admission.py). Defaults are off (no limits)."""

    max_in_flight: int | None = Field(
        None, ge=1, description="scoring requests at once per ingress replica; more get 503 overloaded at once"
    )
    max_decode_pixels: int | None = Field(
        None, ge=1, description="pixels being decoded at once per ingress replica (~8 bytes each while decoding)"
    )
    pixel_wait_s: float = Field(0.5, ge=0, description="how long an image waits for the decode budget before 503")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After of 503 overloaded answers")


class AppArgs(BaseModel):
    """Arguments of ``serve_app.app:build_app``."""

    detectors: list[DetectorArgs]
    fusion: FusionArgs = FusionArgs()
    input: InputArgs = InputArgs()
    access: AccessArgs = AccessArgs()
    admission: AdmissionArgs = AdmissionArgs()

    @field_validator("detectors")
    @classmethod
    def _known_and_unique(cls, detectors: list[DetectorArgs]) -> list[DetectorArgs]:
        import models

        names = [d.name for d in detectors]
        if not names:
            raise ValueError("enable at least one detector")
        if len(set(names)) != len(names):
            raise ValueError(f"detectors listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        unknown = [n for n in names if n not in models.list_detectors()]
        if unknown:
            raise ValueError(f"unknown detectors {unknown}; registered: {models.list_detectors()}")
        return detectors

    def detector_names(self) -> list[str]:
        return [d.name for d in self.detectors]

    def require_fusion(self) -> None:
        """Refuse a config that names no fusion model (no file is read: ``build_app`` calls it where the artifact may
        live on other nodes). Unset is not the rule: that one is asked for by name."""
        if self.fusion.model is None:
            raise FusionNotConfigured(NO_FUSION_MESSAGE)

    def check_fusion(self) -> None:
        """:meth:`require_fusion`, then refuse a fusion artifact that reads a feature of a detector this config does
        not run, naming the detector and its features."""
        self.require_fusion()
        if self.fusion.model == RULE:
            return
        missing = unrun_detectors(artifact_features(self.fusion.model), self.detector_names())
        if missing:
            named = "; ".join(f"{owner} ({', '.join(features)})" for owner, features in missing.items())
            raise SchemaMismatch(
                f"fusion model {self.fusion.model} reads features of detectors this config does not run: {named}. "
                "Enable them (args.detectors and their deployments), or name a fusion trained without them (to train "
                "one for this detector set, set `fusion: {model: rule}` while `imgverify features extract` and "
                "`imgverify train fusion` run, then name the new artifact)."
            )

    def verdict_args(self, model_override: str | None = None) -> dict[str, Any]:
        """``Verdict.build``'s arguments (plain data: Ray Data stages build their own copy from them)."""
        return {
            "detectors": self.detector_names(),
            "model": model_override or self.fusion.model,
            "threshold": self.fusion.threshold,
            "uncertain_range": self.fusion.uncertain_range,
            "hard_evidence": self.fusion.hard_evidence,
        }

    def verdict(self, model_override: str | None = None) -> Verdict:
        """The one :class:`Verdict` of this config (``model_override`` replaces the configured fusion artifact)."""
        return Verdict.build(**self.verdict_args(model_override))


# A detector replica's CPU reservation when the config names none (Ray's own default of 1 CPU makes
# deployments on a small machine wait for CPUs forever, without a word).
DEFAULT_DETECTOR_CPUS = 0.25


class DetectorUserConfig(BaseModel):
    """A detector deployment's ``user_config``: batching plus the detector's own settings.

    Changing it with ``serve deploy`` calls ``reconfigure`` on live replicas: new weights load without
    a restart.
    """

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    detector: dict[str, Any] = Field(default_factory=dict)


class DetectorProfile(BaseModel):
    """How one detector runs: its user_config and resources, as read from a Serve config file."""

    name: str
    user_config: DetectorUserConfig = DetectorUserConfig()
    num_cpus: float = DEFAULT_DETECTOR_CPUS
    num_gpus: float = 0.0
    num_replicas: int | str | None = None


class Profile(BaseModel):
    """One application of a Serve config file: the app args plus each detector's deployment settings."""

    args: AppArgs
    detectors: dict[str, DetectorProfile]


def load_profile(path: str | Path, app_name: str | None = None, check_fusion: bool = True) -> Profile:
    """Read a Serve config file into a :class:`Profile` (for batch scoring, training, tests). Refuses a config with
    no fusion model, or whose fusion artifact reads a detector it does not run (:meth:`AppArgs.check_fusion`), unless
    ``check_fusion`` is False: training reads the detectors only, and the artifact it is about to replace may read
    others, or not exist yet."""
    config = yaml.safe_load(Path(path).read_text())
    apps = config.get("applications", [])
    if app_name is not None:
        apps = [a for a in apps if a.get("name") == app_name]
    if len(apps) != 1:
        raise ValueError(f"{path}: expected exactly one application{f' named {app_name!r}' if app_name else ''}")
    app = apps[0]
    args = AppArgs.model_validate(app.get("args") or {})
    try:
        if check_fusion:
            args.check_fusion()
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"{path}: {err}") from None
    by_name = {d["name"]: d for d in app.get("deployments", [])}
    detectors = {}
    for name in args.detector_names():
        deployment = by_name.get(name, {})
        actor = deployment.get("ray_actor_options", {})
        detectors[name] = DetectorProfile(
            name=name,
            user_config=DetectorUserConfig.model_validate(deployment.get("user_config") or {}),
            num_cpus=actor.get("num_cpus", DEFAULT_DETECTOR_CPUS),
            num_gpus=actor.get("num_gpus", 0.0),
            num_replicas=deployment.get("num_replicas"),
        )
    return Profile(args=args, detectors=detectors)
