"""The typed specs of what lis serves: services, the HTTP ingress, the model store.

Pydantic models, frozen, unknown keys rejected, every field documented where it
is defined. ``serve_app.config.load_config`` reads configuration files into a
``LisConfig``; every other part of lis takes these specs and never reads a file
again. The ML Feedback connector's specs are in ``vocabulary.feedback_specs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from vocabulary.connectors import SERVICE_NAME_PATTERN, Algorithm, Platform
from vocabulary.errors import ServiceNotFound
from vocabulary.feedback_specs import FeedbackConnectorSpec, MqttSpec
from vocabulary.limits import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_NUM_CPUS,
    DEFAULT_TARGET_ONGOING_REQUESTS,
    DEFAULT_TIMEOUT_S,
)
from vocabulary.names import (
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    PLATFORM_RESOURCE_PREFIX,
    platform_resource,
)
from vocabulary.pipeline_specs import PipelineSpec

__all__ = [
    "AutoscalingSpec",
    "HttpSpec",
    "LisConfig",
    "ModelStoreSpec",
    "PreprocessingOverrides",
    "ServiceSpec",
    "TlsSpec",
    "insecure_store",
    "service_problems",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
# Ray resources a replica gets from dedicated keys, not from ``placement``.
_RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class AutoscalingSpec(BaseModel):
    """Ray Serve autoscaling for one service."""

    model_config = _FROZEN

    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 lets an idle service scale to zero).")
    max_replicas: int = Field(ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(
        DEFAULT_TARGET_ONGOING_REQUESTS, gt=0,
        description="Requests in progress per replica that the autoscaler aims for.",
    )
    # None: Ray Serve's defaults (30 s, 600 s, 30 s), which suit a steady camera load.
    upscale_delay_s: float | None = Field(
        None, ge=0, description="How long the load must call for more replicas before they start.")
    downscale_delay_s: float | None = Field(
        None, ge=0, description="How long the load must allow fewer replicas before some stop.")
    look_back_period_s: float | None = Field(
        None, gt=0, description="The window over which the autoscaler averages the load.")

    @model_validator(mode="after")
    def _min_below_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class PreprocessingOverrides(TypedDict, total=False):
    """Overrides of ``deployments.imaging.Preprocessing`` fields (same names, same meaning)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    width: PositiveInt  # model input width in pixels
    height: PositiveInt  # model input height in pixels
    color: Literal["RGB", "BGR"]  # channel order the model expects
    scale: PositiveFloat  # pixels are multiplied by this first (1/255 for 0-1 input)
    mean: tuple[float, float, float]  # then this is subtracted per channel
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat]  # then divided by this
    interpolation: Literal["linear", "area", "nearest", "cubic"]  # resize method


class ServiceSpec(BaseModel):
    """One inference service: what a connector (plus lis's keys) says to run."""

    model_config = _FROZEN

    name: str = Field(pattern=f"^{SERVICE_NAME_PATTERN}$",
                      description="LocalInferenceServiceName: what clients pass as ServiceName.")
    algorithm: Algorithm = Field(description="The AlgoType the service answers to.")
    platform: Platform = Field(description="The connector's platform suffix.")
    connector_id: str = Field(description="The connector's Id (the service name for lis-only entries).")
    connector_arn: str = Field(description="The connector ARN the service stands in for.")
    model_source: str = Field(
        description="Where the model is: an absolute local path, a file:// or an s3:// URI.")
    model_destination: Path | None = Field(
        None, description="MLModelDestinationPath: where a fetched model is put (None: the cache).")
    model_resource_id: str | None = Field(None, description="MLModelResourceId, as given.")
    model_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$",
        description="The model's pinned digest: sha256 of the archive or file, or lis's folder "
                    "digest (deployments.archive.model_digest); the replica refuses any other "
                    "model (None: not pinned).")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0,
                             description="LocalInferenceServiceTimeoutSeconds.")
    memory_limit_kb: int | None = Field(
        None, ge=1, description="LocalInferenceServiceMemoryLimitKB (None: no limit).")
    gpu: bool = Field(False, description="GPUAcceleration is GPU (Aarch64JTX2 connectors only).")
    num_gpus: NonNegativeFloat = Field(
        0.0, description="GPUs per replica; 1 by default when gpu, fractions allowed; 0 on CPU.")
    allow_cpu_fallback: bool = Field(
        False, description="With gpu: run on the CPU when the runtime has no GPU support, "
                           "instead of failing to start.")
    feedback_config_id: str | None = Field(
        None, description="MLFeedbackConnectorConfigId: the ML Feedback config fed by this service.")
    preprocessing: PreprocessingOverrides = Field(
        default_factory=dict, description="Overrides of the model's preprocessing.")
    score_threshold: float | None = Field(
        None, ge=0, le=1, description="Object detection: drop predictions scoring below this.")
    top_k: PositiveInt | None = Field(
        None, description="Keep at most this many predictions, highest score first.")
    num_replicas: PositiveInt | None = Field(
        None, description="Fixed replica count (None and no autoscaling: 1).")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscaling instead of num_replicas.")
    num_cpus: NonNegativeFloat = Field(DEFAULT_NUM_CPUS, description="CPUs reserved per replica.")
    threads: PositiveInt | None = Field(
        None, description="Runtime threads per replica (None: as many as num_cpus, at least 1).")
    placement: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Extra Ray custom resources each replica asks for.")
    max_request_bytes: PositiveInt = Field(DEFAULT_MAX_REQUEST_BYTES,
                                           description="Largest request body accepted.")
    max_pixels: PositiveInt = Field(DEFAULT_MAX_PIXELS,
                                    description="Largest image (width x height) decoded.")
    max_queued_requests: PositiveInt = Field(
        DEFAULT_MAX_QUEUED_REQUESTS, description="Waiting requests beyond which the service answers 503.")

    @field_validator("model_sha256")
    @classmethod
    def _lower_case(cls, value: str | None) -> str | None:
        return value.lower() if value else None

    @field_validator("feedback_config_id")
    @classmethod
    def _empty_means_none(cls, value: str | None) -> str | None:
        # The parameter's pattern allows "", which the connector treats as "no feedback".
        return value or None

    @model_validator(mode="before")
    @classmethod
    def _default_num_gpus(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("num_gpus") is None:
            data = {**data, "num_gpus": 1.0 if data.get("gpu") is True else 0.0}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        problems = service_problems(dict(self))
        if problems:
            raise PydanticCustomError(
                "service", "; ".join(f"{p}: {text}" for p, text in problems), {"problems": problems})
        return self

    @property
    def runtime_threads(self) -> int:
        """Threads the model runtime uses: ``threads``, else one per reserved CPU."""
        return self.threads or max(1, int(self.num_cpus))

    @property
    def platform_resource(self) -> str:
        """The Ray custom resource that places a replica on a node of its platform."""
        return platform_resource(self.platform)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def service_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems between fields, as (parameter, problem). Tolerates invalid values, so
    ``load_config`` can report these alongside the fields' own problems."""
    problems = []
    if data.get("num_replicas") is not None and data.get("autoscaling") is not None:
        problems.append(("num_replicas", "give num_replicas or autoscaling, not both"))
    if data.get("score_threshold") is not None and data.get("algorithm") != "object-detection":
        problems.append(("score_threshold", f"applies to object-detection services only, "
                                            f"not {data.get('algorithm')}"))
    gpu, num_gpus = data.get("gpu") is True, _number(data.get("num_gpus"))
    if num_gpus and not gpu:
        problems.append(("num_gpus", f"{num_gpus:g} GPU(s) asked for, but GPUAcceleration is "
                                     "not GPU (only Aarch64JTX2 connectors run on a GPU)"))
    if gpu and data.get("num_gpus") is not None and not num_gpus:
        problems.append(("num_gpus", "is 0 while GPUAcceleration is GPU"))
    placement = data.get("placement")
    for resource in placement if isinstance(placement, dict) else ():
        if resource in _RESERVED_RESOURCES:
            problems.append((f"placement.{resource}", "use num_cpus, num_gpus or "
                                                      "LocalInferenceServiceMemoryLimitKB instead"))
        elif str(resource).startswith(PLATFORM_RESOURCE_PREFIX):
            problems.append((f"placement.{resource}", "is set from the connector's platform"))
    return problems


class TlsSpec(BaseModel):
    """The certificate the HTTP ingress serves HTTPS with (PEM files, read when it starts)."""

    model_config = _FROZEN

    cert_file: Path = Field(description="The server certificate, then any intermediates (PEM).")
    key_file: Path = Field(description="Its private key (PEM, unencrypted; keep it mode 0600).")


class HttpSpec(BaseModel):
    """Where the HTTP ingress listens."""

    model_config = _FROZEN

    host: str = Field(DEFAULT_HTTP_HOST, min_length=1, description="Bind address.")
    port: int = Field(DEFAULT_HTTP_PORT, ge=1, le=65535, description="TCP port.")
    token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the bearer token clients must send "
                    "(None: no token).")
    local_socket: bool = Field(
        True, description="Send requests to replicas on the ingress's node over Unix sockets "
                          "instead of Ray Serve handles (false: always through Ray Serve).")
    tls: TlsSpec | None = Field(
        None, description="Serve HTTPS with this certificate and key (None: plain HTTP).")


class ModelStoreSpec(BaseModel):
    """The S3 (or S3-compatible) store that ``s3://`` model sources are fetched from."""

    model_config = _FROZEN

    endpoint_url: str | None = Field(
        None, pattern=r"^https?://", description="S3 endpoint (None: AWS S3); e.g. a MinIO URL.")
    region: str | None = Field(None, description="Region name for the client (None: boto3's default).")
    access_key_id: str | None = Field(
        None, description="Access key id. Prefer access_key_id_env: config files get copied around.")
    # SecretStr: shown as '**********' in reprs, logs and error messages.
    secret_access_key: SecretStr | None = Field(
        None, description="Secret key. Prefer secret_access_key_env.")
    access_key_id_env: str | None = Field(
        None, description="Environment variable holding the access key id.")
    secret_access_key_env: str | None = Field(
        None, description="Environment variable holding the secret key.")
    allow_insecure_store: bool = Field(
        False, description="Accept a plain http:// endpoint_url. Without TLS anyone on the path "
                           "can swap the model (a compiled detector is native code) or read "
                           "the credentials; for a store on this box or a trusted segment only.")

    @model_validator(mode="after")
    def _https_unless_allowed(self) -> ModelStoreSpec:
        if insecure_store(self):
            raise ValueError(f"endpoint_url {self.endpoint_url!r} is plain HTTP: models and "
                             "credentials would cross the network unprotected; use https://, "
                             "or set allow_insecure_store: true for a store you trust the path to")
        return self

    @model_validator(mode="after")
    def _one_credential_source(self) -> ModelStoreSpec:
        literal = (self.access_key_id, self.secret_access_key)
        from_env = (self.access_key_id_env, self.secret_access_key_env)
        if any(literal) and any(from_env):
            raise ValueError("give the keys or the names of their environment variables, not both")
        if any(literal) and not all(literal) or any(from_env) and not all(from_env):
            raise ValueError("give both the access key id and the secret key, or neither "
                             "(neither: boto3's usual credential chain)")
        return self


def insecure_store(store: ModelStoreSpec) -> bool:
    """Whether ``store`` is reached over plain HTTP without ``allow_insecure_store``."""
    endpoint = (store.endpoint_url or "").lower()
    return endpoint.startswith("http://") and not store.allow_insecure_store


class LisConfig(BaseModel):
    """Everything lis serves, parsed once from the configuration files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    services: tuple[ServiceSpec, ...] = Field(description="The inference services, in file order.")
    http: HttpSpec = Field(default_factory=HttpSpec, description="The HTTP ingress.")
    model_store: ModelStoreSpec = Field(default_factory=ModelStoreSpec,
                                        description="Where s3:// models are fetched from.")
    feedback: FeedbackConnectorSpec | None = Field(
        None, description="The MLFeedback connector's settings, or None when none is declared.")
    pipelines: tuple[PipelineSpec, ...] = Field(
        (), description="Sources of images inferred continuously, and where results go.")
    mqtt: MqttSpec | None = Field(
        None, description="The broker pipelines publish to (None: ML Feedback's, else the default).")
    sources: tuple[str, ...] = Field((), description="The files this was loaded from.")

    def service(self, name: str) -> ServiceSpec:
        """The service named ``name``; ``ServiceNotFound`` if there is none."""
        for spec in self.services:
            if spec.name == name:
                return spec
        raise ServiceNotFound(name)
