"""Typed arguments of the imgverify application (``build_app(args)``), and reading a Serve config file.

``serve_config*.yaml`` is a standard Ray Serve config: the application's ``args`` validate as
:class:`AppArgs`; each detector's deployment (named after the detector) takes its replicas, autoscaling,
``ray_actor_options`` and ``user_config`` (batching and detector settings) from the ``deployments`` list.
Batch scoring reads the same file through :func:`load_profile`, so both ways in run the same setup.

It lives in ``deployments/`` because everything above reads it (the detector deployment, the ingress, batch
scoring, training) and it reads only ``models/``: imports point one way, down.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.fusion import (
    NO_FUSION_MESSAGE,
    RULE,
    FusionNotConfigured,
    RuleFusion,
    SchemaMismatch,
    artifact_features,
    resolve_fusion_path,
    unrun_detectors,
)
from models.image_input import InputLimits
from models.verdict import Verdict, check_threshold_in_range

# The ingress deployment of ``serve_app.app:build_app``; every other deployment is named after its detector.
INGRESS_DEPLOYMENT = "FusionIngress"
# A replaced ingress replica (``serve deploy`` of new args, a scale-down, SIGTERM) behind HAProxy, Serve's direct
# ingress, first stays reachable for Ray's RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s by default) so the
# load balancer can deregister it, and keeps *admitting* requests meanwhile; the controller kills it
# graceful_shutdown_timeout_s after the stop began. A request admitted at the end of that window needs its whole
# time after it, so the ingress' shutdown budget is the window plus the slowest request.
INGRESS_DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
# Decoding, the fusion and heatmaps on top of the slowest detector's timeout (generous: they take well under 1 s).
REQUEST_OVERHEAD_S = 10.0


def drain_window_s() -> float:
    """Serve's drain window for a replaced ingress replica, as Ray reads it (``INGRESS_DRAIN_ENV``, default 30 s)."""
    return float(os.environ.get(INGRESS_DRAIN_ENV, "30"))


class ConfigError(ValueError):
    """A Serve config that does not validate, in one readable line per problem."""


class UnknownConfigKey(ConfigError):
    """A config key that nothing reads (a misspelling would otherwise be ignored without a word)."""


def unknown_keys_message(keys: Iterable[str], valid: Iterable[str], where: str) -> str | None:
    """A sentence naming each key of ``keys`` that is not in ``valid`` and its closest valid key, or None."""
    valid = sorted(valid)
    unknown = [str(k) for k in keys if k not in valid]
    if not unknown:
        return None
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(parts)} in {where}; valid keys: {', '.join(valid)}"


def check_keys(mapping: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Refuse a key of ``mapping`` that is not in ``valid``, naming it and the closest valid one."""
    message = unknown_keys_message(mapping, valid, where)
    if message:
        raise UnknownConfigKey(message)


class StrictArgs(BaseModel):
    """A config model that refuses unknown keys, naming each and the closest valid key (``{"modle": ...}`` would
    otherwise parse to the defaults and mean something else without a word)."""

    model_config = ConfigDict(extra="forbid")  # the validator below says it first, with the closest key
    # How the error names this part of the config.
    where: ClassVar[str] = "the config"

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            # A plain ValueError: pydantic adds the location (e.g. "fusion", "detectors.0") to its message.
            message = unknown_keys_message(data, cls.model_fields, cls.where)
            if message:
                raise ValueError(message)
        return data


class DetectorArgs(StrictArgs):
    """One enabled detector. Its deployment has the same name."""

    where: ClassVar[str] = "a detector entry (args.detectors)"

    name: str
    timeout_s: float = Field(30.0, gt=0, description="per-request time the ingress waits for this detector")


class InputArgs(StrictArgs):
    """Limits on what callers may send."""

    where: ClassVar[str] = "args.input"

    max_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_pixels: int = Field(50_000_000, gt=0)
    min_side: int = Field(1, ge=1)
    max_batch_files: int = Field(16, ge=1, description="files per POST /v1/detect/batch")
    allow_url: bool = Field(False, description="accept {'url': ...}; off by default (server-side fetch)")
    url_timeout_s: float = Field(10.0, gt=0)
    url_max_redirects: int = Field(3, ge=0)

    def limits(self) -> InputLimits:
        return InputLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels, min_side=self.min_side)


class FusionArgs(StrictArgs):
    """The fusion model and how its probability becomes a label."""

    where: ClassVar[str] = "args.fusion"

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

    @model_validator(mode="after")
    def _threshold_in_range(self) -> FusionArgs:
        # Both set here: refused at parse time. One of them from the model: checked where they meet (check_fusion,
        # which reads the artifact, and Verdict, which every way in builds).
        if self.threshold is not None and self.uncertain_range is not None:
            check_threshold_in_range(self.threshold, self.uncertain_range)
        return self


class ApiKeyArgs(StrictArgs):
    """One accepted API key, by the hex sha256 of the key (the key itself is never in the config)."""

    where: ClassVar[str] = "an API key entry (args.access.api_keys)"

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


class AccessArgs(StrictArgs):
    """API keys and per-key rate limits (serve_app/auth.py). Off unless a key is configured here or in the
    environment variable named by ``keys_env`` (raw keys, comma-separated, in the ingress replicas' env)."""

    where: ClassVar[str] = "args.access"

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


class AdmissionArgs(StrictArgs):
    """Backpressure in each ingress replica (serve_app/admission.py). Defaults are off (no limits)."""

    where: ClassVar[str] = "args.admission"

    max_in_flight: int | None = Field(
        None, ge=1, description="scoring requests at once per ingress replica; more get 503 overloaded at once"
    )
    max_decode_pixels: int | None = Field(
        None, ge=1, description="pixels being decoded at once per ingress replica (~8 bytes each while decoding)"
    )
    pixel_wait_s: float = Field(0.5, ge=0, description="how long an image waits for the decode budget before 503")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After of 503 overloaded answers")


class AppArgs(StrictArgs):
    """Arguments of ``serve_app.app:build_app``."""

    where: ClassVar[str] = "args"

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

    def slowest_request_s(self) -> float:
        """The longest an admitted scoring request can take: fetching a URL image, the slowest detector's timeout
        (detectors run at once), and decoding, fusion and heatmaps."""
        fetch = self.input.url_timeout_s if self.input.allow_url else 0.0
        return fetch + max(d.timeout_s for d in self.detectors) + REQUEST_OVERHEAD_S

    def ingress_shutdown_s(self) -> float:
        """The ingress' least ``graceful_shutdown_timeout_s``: Serve's drain window, in which a replica being replaced
        still admits requests, plus the slowest request (so none it admitted is cut off)."""
        return drain_window_s() + self.slowest_request_s()

    def require_fusion(self) -> None:
        """Refuse a config that names no fusion model (no file is read: ``build_app`` calls it where the artifact may
        live on other nodes). Unset is not the rule: that one is asked for by name."""
        if self.fusion.model is None:
            raise FusionNotConfigured(NO_FUSION_MESSAGE)

    def check_fusion(self) -> None:
        """:meth:`require_fusion`, then refuse a fusion artifact that reads a feature of a detector this config does
        not run, naming the detector and its features, and a threshold outside the uncertain range
        (:meth:`check_threshold`)."""
        self.require_fusion()
        if self.fusion.model != RULE:
            missing = unrun_detectors(artifact_features(self.fusion.model), self.detector_names())
            if missing:
                named = "; ".join(f"{owner} ({', '.join(features)})" for owner, features in missing.items())
                raise SchemaMismatch(
                    f"fusion model {self.fusion.model} reads features of detectors this config does not run: "
                    f"{named}. Enable them (args.detectors and their deployments), or name a fusion trained without "
                    "them (to train one for this detector set, set `fusion: {model: rule}` while `imgverify features "
                    "extract` and `imgverify train fusion` run, then name the new artifact)."
                )
        self.check_threshold()

    def check_threshold(self) -> None:
        """Refuse an effective threshold outside the effective uncertain range, either of them from the config or
        the fusion model (as :class:`Verdict` does): the artifact's values are read, nothing is built."""
        fusion = self.fusion
        if fusion.model is None:
            return
        if fusion.model == RULE:
            own: dict[str, Any] = {"threshold": RuleFusion.threshold, "uncertain_range": RuleFusion.uncertain_range}
        else:
            own = json.loads(resolve_fusion_path(fusion.model).read_text())
        threshold = own.get("threshold") if fusion.threshold is None else fusion.threshold
        uncertain_range = own.get("uncertain_range") if fusion.uncertain_range is None else fusion.uncertain_range
        if threshold is None or uncertain_range is None:
            return  # not a complete artifact: building its model says what it lacks
        try:
            check_threshold_in_range(
                float(threshold),
                (float(uncertain_range[0]), float(uncertain_range[1])),
                "model" if fusion.threshold is None else "config",
                "model" if fusion.uncertain_range is None else "config",
            )
        except ValueError as err:
            raise ValueError(f"fusion model {fusion.model}: {err}") from None

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


class DetectorUserConfig(StrictArgs):
    """A detector deployment's ``user_config``: batching plus the detector's own settings.

    Changing it with ``serve deploy`` calls ``reconfigure`` on live replicas: new weights load without
    a restart.
    """

    where: ClassVar[str] = "a detector deployment's user_config"

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    detector: dict[str, Any] = Field(default_factory=dict)


class DetectorProfile(StrictArgs):
    """How one detector runs: its user_config and resources, as read from a Serve config file."""

    where: ClassVar[str] = "a detector profile"

    name: str
    user_config: DetectorUserConfig = DetectorUserConfig()
    num_cpus: float = DEFAULT_DETECTOR_CPUS
    num_gpus: float = 0.0
    num_replicas: int | str | None = None


class Profile(StrictArgs):
    """One application of a Serve config file: the app args plus each detector's deployment settings."""

    where: ClassVar[str] = "a profile"

    args: AppArgs
    detectors: dict[str, DetectorProfile]


def load_profile(path: str | Path, app_name: str | None = None, check_fusion: bool = True) -> Profile:
    """Read a Serve config file into a :class:`Profile` (for batch scoring, training, tests). Refuses what would mean
    something else than it says: an unknown key anywhere (named with the closest valid one), a deployment entry
    that matches no enabled detector nor the ingress (Serve refuses it too), a threshold outside the uncertain
    range; and a config with no fusion model, or whose fusion artifact reads a detector it does not run
    (:meth:`AppArgs.check_fusion`), unless ``check_fusion`` is False: training reads the detectors only, and the
    artifact it is about to replace may read others, or not exist yet."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    try:
        args, deployments = _read_app(config, app_name, check_fusion)
        detectors = {}
        for name in args.detector_names():
            deployment = deployments.get(name, {})
            actor = deployment.get("ray_actor_options") or {}
            detectors[name] = DetectorProfile(
                name=name,
                user_config=_validated(
                    DetectorUserConfig, deployment.get("user_config") or {}, f"deployment {name!r} user_config"
                ),
                num_cpus=actor.get("num_cpus", DEFAULT_DETECTOR_CPUS),
                num_gpus=actor.get("num_gpus", 0.0),
                num_replicas=deployment.get("num_replicas"),
            )
    except (ValueError, FileNotFoundError) as err:
        raise _with_path(err, path) from None
    return Profile(args=args, detectors=detectors)


def _with_path(err: Exception, path: str | Path) -> Exception:
    """The same kind of error, its message prefixed with the config file's path."""
    try:
        return type(err)(f"{path}: {err}")
    except TypeError:  # an error class that takes more than a message (json.JSONDecodeError)
        return ValueError(f"{path}: {err}")


def _validated(model: type[StrictArgs], data: Any, where: str) -> Any:
    """``model.model_validate(data)``, its errors as one :class:`ConfigError` that names where each one is."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = ".".join(str(part) for part in (where, *error["loc"]))
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {message}")
        raise ConfigError("; ".join(problems)) from None


def _read_app(config: Any, app_name: str | None, check_fusion: bool) -> tuple[AppArgs, dict[str, dict[str, Any]]]:
    """The one application's args (validated) and deployment entries (by name, checked)."""
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema  # Serve's own keys, at this Ray version

    if not isinstance(config, Mapping):
        raise ConfigError("not a Serve config (a mapping with `applications`)")
    check_keys(config, ServeDeploySchema.model_fields, "the Serve config")
    apps = config.get("applications") or []
    if app_name is not None:
        apps = [a for a in apps if a.get("name") == app_name]
    if len(apps) != 1:
        raise ConfigError(f"expected exactly one application{f' named {app_name!r}' if app_name else ''}")
    app = apps[0]
    check_keys(app, ServeApplicationSchema.model_fields, f"application {app.get('name')!r}")
    args = _validated(AppArgs, app.get("args") or {}, "args")
    if check_fusion:
        args.check_fusion()
    deployments = check_deployments(app.get("deployments") or [], args.detector_names())
    check_ingress_shutdown(deployments.get(INGRESS_DEPLOYMENT, {}), args)
    return args, deployments


def check_ingress_shutdown(entry: Mapping[str, Any], args: AppArgs) -> None:
    """Refuse an ingress ``graceful_shutdown_timeout_s`` that would kill a replaced replica while it still works on
    requests it admitted (:meth:`AppArgs.ingress_shutdown_s`). Unset, ``build_app`` sets that least value itself."""
    given = entry.get("graceful_shutdown_timeout_s")
    needed = args.ingress_shutdown_s()
    if given is not None and float(given) < needed:
        raise ConfigError(
            f"deployment {INGRESS_DEPLOYMENT!r} graceful_shutdown_timeout_s {given} is shorter than a replaced "
            f"ingress may need: {needed:g} s = Serve's drain window ({INGRESS_DRAIN_ENV}, {drain_window_s():g} s, "
            f"in which it still admits requests) + the slowest request ({args.slowest_request_s():g} s: the "
            f"slowest detector's timeout_s + {REQUEST_OVERHEAD_S:g} s, + url_timeout_s when allow_url). Raise it, "
            f"or leave it out (build_app sets {needed:g})."
        )


def check_deployments(deployments: list[Any], detectors: list[str]) -> dict[str, dict[str, Any]]:
    """The ``deployments`` entries of an application by name. Refuses an entry that matches no enabled detector nor
    the ingress (``serve deploy`` refuses it: "Deployment 'x' does not exist"), a name listed twice, an unknown key
    (Serve would ignore it: a misspelt ``num_replica`` runs with the default) and a ``user_config`` on the ingress
    (it has no ``reconfigure``; its settings are ``args``)."""
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema

    known = [INGRESS_DEPLOYMENT, *detectors]
    by_name: dict[str, dict[str, Any]] = {}
    for position, entry in enumerate(deployments):
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise ConfigError(
                f"deployments[{position}] has no name: each entry names a detector or {INGRESS_DEPLOYMENT}"
            )
        name = entry["name"]
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            raise ConfigError(
                f"deployment {name!r} matches no enabled detector nor {INGRESS_DEPLOYMENT}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; this application's deployments: {', '.join(known)}. Serve refuses an entry for a deployment "
                "the application does not have: enable the detector in args.detectors, or remove the entry."
            )
        if name in by_name:
            raise ConfigError(f"deployment {name!r} is listed twice in deployments")
        check_keys(entry, DeploymentSchema.model_fields, f"deployment {name!r}")
        check_keys(
            entry.get("ray_actor_options") or {},
            RayActorOptionsSchema.model_fields,
            f"deployment {name!r} ray_actor_options",
        )
        if name == INGRESS_DEPLOYMENT and entry.get("user_config") is not None:
            raise ConfigError(
                f"deployment {INGRESS_DEPLOYMENT!r} takes no user_config (it has no reconfigure; Serve fails its "
                "replicas): its settings are the application's args"
            )
        by_name[name] = dict(entry)
    return by_name
