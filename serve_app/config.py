"""Configuration: Greengrass connector and resource definitions, or a lis services file, in;
typed, validated specs out.

``load_config(paths)`` reads one or more files (JSON or YAML, told apart by content)
and returns one ``LisConfig``. Each file may be:

* the JSON given to ``aws greengrass create-connector-definition``: the
  ``--initial-version`` body ``{"Connectors": [...]}`` or the full
  ``{"Name": ..., "InitialVersion": {"Connectors": [...]}}`` (also the
  ``{"Definition": {...}}`` that ``get-connector-definition-version`` prints);
* a resource definition, the same shapes with ``"Resources"``, whose ML model
  resources say where a model comes from (``S3Uri``) and goes (``DestinationPath``);
* a lis services file: ``services:`` (each entry uses the connector's parameter
  names plus ``ConnectorArn``, or ``algorithm:`` + ``platform:``, plus lis's own
  snake_case keys such as ``model`` or ``num_replicas``), optional ``connectors:``
  and ``resources:`` in the Greengrass shapes, and the top-level ``http``,
  ``model_store`` and ``feedback`` settings. An entry ``{connector: <Id>, ...}``
  adds lis keys to a connector defined elsewhere, so a Greengrass definition can
  be used unchanged.

Connector definitions are checked exactly as the AWS pages document them (every
required parameter, every pattern, values are strings). A services file is the
lis-native form and is more forgiving: whole numbers may be written unquoted,
``LocalInferenceServiceTimeoutSeconds`` defaults to 10, the memory limit to none,
and ``MLModelDestinationPath``/``MLModelResourceId``/``MLModelSageMakerJobArn`` may be
left out when ``model`` says where the model is.

Where a service's model comes from: lis's ``model`` key, else the S3Uri of the ML
resource ``MLModelResourceId`` names, else ``MLModelDestinationPath`` as a local path
(lis never calls SageMaker: for a SageMaker-job resource, put the model at the
destination path or give ``model``). Relative paths are relative to the file that
holds them. Every problem in every file is reported at once in one ``ConfigError``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from serve_app._connectors import (
    ALGORITHMS,
    PLATFORMS,
    SAGEMAKER_JOB_ARN_PATTERN,
    SERVICE_NAME_PATTERN,
    Algorithm,
    ConnectorArn,
    Platform,
    check_parameters,
    connector_arn_for,
    parse_connector_arn,
)
from serve_app.errors import ConfigError, ConfigIssue, ServiceNotFound

__all__ = [
    "DEFAULT_HTTP_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_QUEUED_REQUESTS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_NUM_CPUS",
    "DEFAULT_TARGET_ONGOING_REQUESTS",
    "DEFAULT_TIMEOUT_S",
    "AutoscalingSpec",
    "HttpSpec",
    "LisConfig",
    "ModelStoreSpec",
    "PreprocessingOverrides",
    "ServiceSpec",
    "demo_config_path",
    "load_config",
]

# The detection page: "The default value is 10."
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_NUM_CPUS = 1.0
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
# Same as deployments.imaging.DEFAULT_MAX_PIXELS (not imported: that pulls in OpenCV).
DEFAULT_MAX_PIXELS = 50_000_000
# Beyond this many waiting requests a service answers 503 instead of queueing forever.
DEFAULT_MAX_QUEUED_REQUESTS = 64
DEFAULT_TARGET_ONGOING_REQUESTS = 2.0  # Ray Serve's own default
DEFAULT_HTTP_HOST = "127.0.0.1"  # exposing lis on the network is an explicit choice
DEFAULT_HTTP_PORT = 8000

_FROZEN = ConfigDict(frozen=True, extra="forbid")
# Ray resources a replica gets from dedicated keys, not from ``placement``.
_RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
_PLATFORM_RESOURCE_PREFIX = "connector-platform:"
_MODEL_SCHEMES = ("s3", "file")


# --- the typed specs -----------------------------------------------------------------


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
        problems = _service_problems(dict(self))
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
        return f"{_PLATFORM_RESOURCE_PREFIX}{self.platform}"


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _service_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
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
        elif str(resource).startswith(_PLATFORM_RESOURCE_PREFIX):
            problems.append((f"placement.{resource}", "is set from the connector's platform"))
    return problems


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


class ModelStoreSpec(BaseModel):
    """The S3 (or S3-compatible) store that ``s3://`` model sources are fetched from."""

    model_config = _FROZEN

    endpoint_url: str | None = Field(
        None, pattern=r"^https?://", description="S3 endpoint (None: AWS S3); e.g. a MinIO URL.")
    region: str | None = Field(None, description="Region name for the client (None: boto3's default).")
    access_key_id: str | None = Field(
        None, description="Access key id. Prefer access_key_id_env: config files get copied around.")
    secret_access_key: str | None = Field(None, description="Secret key. Prefer secret_access_key_env.")
    access_key_id_env: str | None = Field(
        None, description="Environment variable holding the access key id.")
    secret_access_key_env: str | None = Field(
        None, description="Environment variable holding the secret key.")

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


class LisConfig(BaseModel):
    """Everything lis serves, parsed once from the configuration files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    services: tuple[ServiceSpec, ...] = Field(description="The inference services, in file order.")
    http: HttpSpec = Field(default_factory=HttpSpec, description="The HTTP ingress.")
    model_store: ModelStoreSpec = Field(default_factory=ModelStoreSpec,
                                        description="Where s3:// models are fetched from.")
    feedback: Any = Field(
        None, description="serve_app.feedback_config.FeedbackConnectorSpec of the MLFeedback "
                          "connector, or None when none is declared.")
    sources: tuple[str, ...] = Field((), description="The files this was loaded from.")

    def service(self, name: str) -> ServiceSpec:
        """The service named ``name``; ``ServiceNotFound`` if there is none."""
        for spec in self.services:
            if spec.name == name:
                return spec
        raise ServiceNotFound(name)


def demo_config_path() -> Path:
    """``configs/demo.yaml``: the demo services ``lis up`` serves without arguments."""
    return Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


# --- reading files -------------------------------------------------------------------

# Connector-definition keys AWS's CLI input and output carry besides the definition itself.
_DEFINITION_WRAPPERS = {"InitialVersion", "Definition"}
_DEFINITION_EXTRAS = {"Name", "tags", "AmznClientToken", "Arn", "CreationTimestamp", "Id", "Version"}
_SERVICES_FILE_KEYS = ("services", "connectors", "resources", "http", "model_store", "feedback")
_ID_PATTERN = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_ML_RESOURCE_KINDS = ("S3MachineLearningModelResourceData", "SageMakerMachineLearningModelResourceData")
# Other Greengrass resource kinds may share the definition; lis has no use for them.
_OTHER_RESOURCE_KINDS = ("LocalDeviceResourceData", "LocalVolumeResourceData",
                         "SecretsManagerSecretResourceData")
_INVALID = "invalid"
_SERVICE_KEYS = frozenset(ServiceSpec.model_fields) - {
    "name", "algorithm", "platform", "connector_id", "connector_arn", "model_source",
    "model_destination", "model_resource_id", "timeout_s", "memory_limit_kb", "gpu",
    "feedback_config_id",
} | {"model"}
_ENTRY_IDENTITY_KEYS = ("Id", "ConnectorArn", "algorithm", "platform", "connector")


@dataclass
class _Connector:
    """A connector as found in a file, before it becomes a service."""

    where: str
    id: str
    arn: ConnectorArn | None  # None when the ARN is invalid (already reported)
    parameters: dict[str, object]
    base_dir: Path
    lenient: bool  # from a lis services file
    id_given: bool = True  # False: a services entry without Id, named after its service
    options: dict[str, object] = field(default_factory=dict)  # lis's snake_case keys
    options_where: str | None = None  # where those keys were written
    options_dir: Path | None = None


@dataclass(frozen=True)
class _Resource:
    id: str
    kind: str
    destination: str | None = None
    s3_uri: str | None = None
    sagemaker_job_arn: str | None = None


@dataclass
class _Collected:
    connectors: list[_Connector] = field(default_factory=list)
    resources: dict[str, _Resource] | None = None  # None: no resource definition given
    overlays: list[tuple[str, str, dict[str, object], Path]] = field(default_factory=list)
    settings: dict[str, tuple[str, object]] = field(default_factory=dict)  # key -> (file, value)
    issues: list[ConfigIssue] = field(default_factory=list)

    def issue(self, where: str, parameter: str | None, problem: str) -> None:
        self.issues.append(ConfigIssue(where, parameter, problem))


_UNREADABLE = object()


def _read_document(path: Path, found: _Collected) -> object:
    """The file's content, JSON or YAML (told apart by the first character); problems reported."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        found.issue(str(path), None, f"cannot read the file: {error}")
        return _UNREADABLE
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            found.issue(str(path), None, f"invalid JSON at line {error.lineno} column "
                                         f"{error.colno}: {error.msg}")
            return _UNREADABLE
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        found.issue(str(path), None, f"invalid YAML: {error}")
        return _UNREADABLE


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _list_of_mappings(value: object, where: str, what: str, found: _Collected) -> list[dict]:
    if not isinstance(value, list):
        found.issue(where, what, f"expected a list, got {_shown(value)}")
        return []
    good = [item for item in value if isinstance(item, dict)]
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            found.issue(where, f"{what}[{index}]", f"expected a mapping, got {_shown(item)}")
    return good


def _collect_file(path: Path, found: _Collected) -> None:
    document = _read_document(path, found)
    if document is _UNREADABLE:
        return
    if document is None:
        found.issue(str(path), None, "the file is empty")
        return
    if not isinstance(document, dict):
        found.issue(str(path), None, f"expected a mapping at the top level, got {type(document).__name__}")
        return
    if {"Connectors", "Resources"} & document.keys() or _DEFINITION_WRAPPERS & document.keys():
        _collect_definition(path, document, found)
    else:
        _collect_services_file(path, document, found)


def _collect_definition(path: Path, document: dict, found: _Collected) -> None:
    """A Greengrass connector or resource definition, bare body or wrapped."""
    body: object = document
    wrapper = next((key for key in _DEFINITION_WRAPPERS if key in document), None)
    if wrapper:
        for key in sorted(document.keys() - _DEFINITION_EXTRAS - {wrapper}):
            found.issue(str(path), key, f"unknown key{_suggest(key, [wrapper, *_DEFINITION_EXTRAS])}")
        body = document[wrapper]
        if not isinstance(body, dict):
            found.issue(str(path), wrapper, f"expected a mapping, got {body!r}")
            return
    for key in sorted(body.keys() - {"Connectors", "Resources"}):
        found.issue(str(path), key, f"unknown key{_suggest(key, ['Connectors', 'Resources'])}")
    if "Connectors" in body:
        for raw in _list_of_mappings(body["Connectors"], str(path), "Connectors", found):
            _collect_connector(raw, path.parent, lenient=False, found=found)
    if "Resources" in body:
        _collect_resources(body["Resources"], str(path), "Resources", found)


def _collect_services_file(path: Path, document: dict, found: _Collected) -> None:
    where = str(path)
    for key in sorted(document.keys() - set(_SERVICES_FILE_KEYS)):
        found.issue(where, key, f"unknown key{_suggest(key, _SERVICES_FILE_KEYS)}")
    for raw in _list_of_mappings(document.get("connectors", []), where, "connectors", found):
        _collect_connector(raw, path.parent, lenient=True, found=found)
    if "resources" in document:
        _collect_resources(document["resources"], where, "resources", found)
    for index, entry in enumerate(_entries(document.get("services", []), where, found)):
        _collect_entry(entry, f"{where}: services[{index}]", path.parent, found)
    for key in ("http", "model_store", "feedback"):
        if key in document:
            if key in found.settings:
                found.issue(where, key, f"already given in {found.settings[key][0]}")
            else:
                found.settings[key] = (where, document[key])


def _entries(value: object, where: str, found: _Collected) -> list[dict | None]:
    if not isinstance(value, list):
        found.issue(where, "services", f"expected a list, got {value!r}")
        return []
    entries: list[dict | None] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            found.issue(f"{where}: services[{index}]", None, f"expected a mapping, got {entry!r}")
        entries.append(entry if isinstance(entry, dict) else None)
    return entries


# --- connectors ----------------------------------------------------------------------


def _check_id(value: object, where: str, parameter: str, found: _Collected) -> bool:
    if isinstance(value, str) and _ID_PATTERN.fullmatch(value):
        return True
    found.issue(where, parameter, f"{value!r} is not a valid id (1 to 128 letters, digits, "
                                  "':', '_' or '-')")
    return False


def _parse_arn(value: object, where: str, found: _Collected) -> ConnectorArn | None:
    try:
        return parse_connector_arn(value)
    except ValueError as error:
        found.issue(where, "ConnectorArn", str(error))
        return None


def _collect_connector(raw: dict, base_dir: Path, *, lenient: bool, found: _Collected) -> None:
    """A connector in the Greengrass shape: ``{Id, ConnectorArn, Parameters}``."""
    connector_id = raw.get("Id")
    where = f"connector {connector_id!r}"
    if not _check_id(connector_id, where, "Id", found):
        connector_id = str(connector_id)
    for key in sorted(raw.keys() - {"Id", "ConnectorArn", "Parameters"}):
        found.issue(where, key, f"unknown key{_suggest(key, ['Id', 'ConnectorArn', 'Parameters'])}")
    if "ConnectorArn" not in raw:
        found.issue(where, "ConnectorArn", "missing")
    arn = _parse_arn(raw["ConnectorArn"], where, found) if "ConnectorArn" in raw else None
    parameters = raw.get("Parameters", {})
    if not isinstance(parameters, dict):
        found.issue(where, "Parameters", f"expected a mapping of strings, got {parameters!r}")
        parameters = {}
    if lenient:
        parameters = _loosen(parameters)
    found.connectors.append(_Connector(where, connector_id, arn, dict(parameters), base_dir, lenient))


def _loosen(parameters: Mapping[str, object]) -> dict[str, object]:
    """A services file may write whole numbers unquoted and an empty value as nothing."""
    def loose(value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return "" if value is None else value
    return {name: loose(value) for name, value in parameters.items()}


def _collect_entry(entry: dict | None, where: str, base_dir: Path, found: _Collected) -> None:
    """One ``services:`` entry: a new service, or lis keys for a connector defined elsewhere."""
    if entry is None:
        return
    if "connector" in entry:
        _collect_overlay(entry, where, base_dir, found)
        return
    arn = _entry_arn(entry, where, found)
    parameters = {k: v for k, v in entry.items() if k[:1].isupper() and k not in _ENTRY_IDENTITY_KEYS}
    options = {k: v for k, v in entry.items() if k in _SERVICE_KEYS}
    for key in sorted(entry.keys() - parameters.keys() - options.keys() - set(_ENTRY_IDENTITY_KEYS)):
        found.issue(where, key, f"unknown key{_suggest(key, sorted(_SERVICE_KEYS))}")
    name = parameters.get("LocalInferenceServiceName")
    connector_id = entry.get("Id", name if isinstance(name, str) else where)
    if "Id" in entry:
        _check_id(connector_id, where, "Id", found)
    found.connectors.append(_Connector(
        where, str(connector_id), arn, _loosen(parameters), base_dir, lenient=True,
        id_given="Id" in entry, options=options, options_where=where, options_dir=base_dir))


def _entry_arn(entry: dict, where: str, found: _Collected) -> ConnectorArn | None:
    if "ConnectorArn" in entry:
        if "algorithm" in entry or "platform" in entry:
            found.issue(where, "ConnectorArn", "give ConnectorArn or algorithm + platform, not both")
        return _parse_arn(entry["ConnectorArn"], where, found)
    algorithm, platform = entry.get("algorithm"), entry.get("platform")
    if algorithm is None and platform is None:
        found.issue(where, "ConnectorArn", "missing (or give algorithm: and platform:)")
        return None
    bad = False
    for key, value, known in (("algorithm", algorithm, ALGORITHMS), ("platform", platform, PLATFORMS)):
        if value not in known:
            found.issue(where, key, f"{value!r} is not one of {', '.join(known)}")
            bad = True
    return None if bad else parse_connector_arn(connector_arn_for(algorithm, platform))


def _collect_overlay(entry: dict, where: str, base_dir: Path, found: _Collected) -> None:
    options = {k: v for k, v in entry.items() if k != "connector"}
    for key in sorted(options.keys() - _SERVICE_KEYS):
        hint = (" (connector parameters belong in the connector definition)"
                if key[:1].isupper() else _suggest(key, sorted(_SERVICE_KEYS)))
        found.issue(where, key, f"unknown key{hint}")
    options = {k: v for k, v in options.items() if k in _SERVICE_KEYS}
    found.overlays.append((where, str(entry["connector"]), options, base_dir))


def _apply_overlays(found: _Collected) -> None:
    by_id = {c.id: c for c in found.connectors}
    applied: dict[str, str] = {}
    for where, connector_id, options, base_dir in found.overlays:
        target = by_id.get(connector_id)
        if target is None or (target.arn is not None and target.arn.is_feedback):
            found.issue(where, "connector", f"{connector_id!r} names no inference connector "
                                            f"(defined: {', '.join(sorted(by_id)) or 'none'})")
        elif connector_id in applied:
            found.issue(where, "connector", f"{connector_id!r} already has lis keys in {applied[connector_id]}")
        else:
            applied[connector_id] = where
            target.options, target.options_where, target.options_dir = options, where, base_dir


# --- resources -----------------------------------------------------------------------


def _collect_resources(value: object, where: str, what: str, found: _Collected) -> None:
    if found.resources is None:
        found.resources = {}
    for raw in _list_of_mappings(value, where, what, found):
        resource = _parse_resource(raw, found)
        if resource is None:
            continue
        if resource.id in found.resources:
            found.issue(f"resource {resource.id!r}", "Id", "defined twice")
        found.resources[resource.id] = resource


def _parse_resource(raw: dict, found: _Collected) -> _Resource | None:
    resource_id = raw.get("Id")
    where = f"resource {resource_id!r}"
    valid_id = _check_id(resource_id, where, "Id", found)
    for key in sorted(raw.keys() - {"Id", "Name", "ResourceDataContainer"}):
        found.issue(where, key, f"unknown key{_suggest(key, ['Id', 'Name', 'ResourceDataContainer'])}")
    if not isinstance(raw.get("Name"), str) or not raw.get("Name"):
        found.issue(where, "Name", f"missing or not a string: {raw.get('Name')!r}")
    container = raw.get("ResourceDataContainer")
    kinds = list(container) if isinstance(container, dict) else []
    # An invalid resource keeps its id (kind _INVALID, or no data), so connectors that
    # name it get no second issue.
    if len(kinds) != 1:
        found.issue(where, "ResourceDataContainer",
                    f"expected exactly one of {', '.join(_ML_RESOURCE_KINDS)}, got {_shown(container)}")
        kind, data = _INVALID, None
    elif kinds[0] in _ML_RESOURCE_KINDS:
        kind, data = kinds[0], _ml_resource_data(container[kinds[0]], kinds[0], where, found)
    elif kinds[0] in _OTHER_RESOURCE_KINDS:
        kind, data = kinds[0], None
    else:
        found.issue(where, "ResourceDataContainer",
                    f"unknown resource kind {kinds[0]!r}{_suggest(kinds[0], _ML_RESOURCE_KINDS)}")
        kind, data = _INVALID, None
    return _Resource(str(resource_id), kind, **(data or {})) if valid_id else None


def _ml_resource_data(data: object, kind: str, where: str, found: _Collected) -> dict[str, str] | None:
    source_key = "S3Uri" if kind.startswith("S3") else "SageMakerJobArn"
    if not isinstance(data, dict):
        found.issue(where, kind, f"expected a mapping, got {data!r}")
        return None
    for key in sorted(data.keys() - {"DestinationPath", source_key, "OwnerSetting"}):
        found.issue(where, f"{kind}.{key}", f"unknown key{_suggest(key, ['DestinationPath', source_key])}")
    destination, source = data.get("DestinationPath"), data.get(source_key)
    ok = True
    if not (isinstance(destination, str) and destination.startswith("/")):
        found.issue(where, f"{kind}.DestinationPath", f"{destination!r} is not an absolute path")
        ok = False
    pattern = r"s3://[^/\s]+/\S+" if source_key == "S3Uri" else SAGEMAKER_JOB_ARN_PATTERN
    if not (isinstance(source, str) and re.fullmatch(pattern, source)):
        found.issue(where, f"{kind}.{source_key}", f"{source!r} does not match {pattern!r}")
        ok = False
    if not ok:
        return None
    key = "s3_uri" if source_key == "S3Uri" else "sagemaker_job_arn"
    return {"destination": destination, key: source}



# --- services ------------------------------------------------------------------------

# Parameters the AWS pages mark required that a lis services file may leave out.
_LENIENT_OPTIONAL = frozenset({
    "MLModelResourceId", "MLModelSageMakerJobArn",
    "LocalInferenceServiceTimeoutSeconds", "LocalInferenceServiceMemoryLimitKB",
})
# Stand-ins for derived fields when a connector's own parameters are broken: lis keys
# are still validated (so every problem shows at once) and only their issues kept.
_PLACEHOLDER = {
    "name": "placeholder", "algorithm": "object-detection", "platform": "x86-64",
    "connector_id": "placeholder", "connector_arn": "placeholder", "model_source": "/",
}


def _local_path(value: str, base_dir: Path) -> Path:
    # normpath, not resolve(): keep the user's symlinks (a "current" model link stays one).
    return Path(os.path.normpath(base_dir.absolute() / Path(value).expanduser()))


def _model_uri(model: object, base_dir: Path, where: str, found: _Collected) -> str | None:
    """lis's ``model`` key: a local path (relative to its file), ``file://`` or ``s3://``."""
    if not isinstance(model, str) or not model.strip():
        found.issue(where, "model", f"{model!r} is not a path or URI")
        return None
    parsed = urlparse(model)
    if parsed.scheme == "s3" and not (parsed.netloc and parsed.path.strip("/")):
        found.issue(where, "model", f"{model!r} is not s3://<bucket>/<key>")
    elif parsed.scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path):
        found.issue(where, "model", f"{model!r} is not file:///<absolute path>")
    elif parsed.scheme and parsed.scheme not in _MODEL_SCHEMES:
        found.issue(where, "model", f"{model!r}: unsupported scheme {parsed.scheme!r} "
                                    "(use a local path, file:// or s3://)")
    elif not parsed.scheme:
        return str(_local_path(model, base_dir))
    else:
        return model
    return None


def _referenced_resource(c: _Connector, resources: dict[str, _Resource] | None,
                         found: _Collected) -> _Resource | None:
    resource_id = c.parameters.get("MLModelResourceId")
    if resources is None or not isinstance(resource_id, str) or not resource_id:
        return None  # no resource definition anywhere: the id is only recorded
    resource = resources.get(resource_id)
    if resource is not None and resource.kind == _INVALID:
        return None  # already reported
    if resource is None:
        found.issue(c.where, "MLModelResourceId", f"{resource_id!r} names no resource "
                                                  f"(defined: {', '.join(sorted(resources)) or 'none'})")
    elif resource.kind not in _ML_RESOURCE_KINDS:
        found.issue(c.where, "MLModelResourceId",
                    f"{resource_id!r} is a {resource.kind} resource, not an ML model resource")
    elif resource.destination is not None:  # None: the resource itself is invalid (reported)
        _check_resource_agrees(c, resource, found)
        return resource
    return None


def _same_job(left: str, right: str) -> bool:
    # The pages write both training-job/ and training-job: (see _connectors).
    return left.replace("training-job:", "training-job/") == right.replace("training-job:", "training-job/")


def _check_resource_agrees(c: _Connector, resource: _Resource, found: _Collected) -> None:
    destination = c.parameters.get("MLModelDestinationPath")
    if isinstance(destination, str) and destination and destination != resource.destination:
        found.issue(c.where, "MLModelDestinationPath",
                    f"{destination!r} differs from resource {resource.id!r}'s DestinationPath "
                    f"{resource.destination!r}")
    job = c.parameters.get("MLModelSageMakerJobArn")
    if resource.sagemaker_job_arn and isinstance(job, str) and not _same_job(job, resource.sagemaker_job_arn):
        found.issue(c.where, "MLModelSageMakerJobArn",
                    f"{job!r} differs from resource {resource.id!r}'s SageMakerJobArn "
                    f"{resource.sagemaker_job_arn!r}")
    if resource.sagemaker_job_arn and c.arn and c.arn.family == "ObjectDetection" and "model" not in c.options:
        found.issue(c.where, "MLModelResourceId",
                    f"{resource.id!r} is a SageMaker training-job resource; object detection "
                    "needs a Neo-compiled model from S3 (S3MachineLearningModelResourceData) "
                    "or lis's model key")


def _model_location(c: _Connector, resources: dict[str, _Resource] | None,
                    found: _Collected) -> tuple[str, Path | None] | None:
    """(model_source, model_destination): ``model`` > the resource's S3Uri > MLModelDestinationPath."""
    given = c.parameters.get("MLModelDestinationPath")
    destination = _local_path(given, c.base_dir) if isinstance(given, str) and given else None
    resource = _referenced_resource(c, resources, found)
    if "model" in c.options:
        source = _model_uri(c.options["model"], c.options_dir or c.base_dir,
                            c.options_where or c.where, found)
    elif resource is not None and resource.s3_uri:
        source = resource.s3_uri
    else:
        # A missing or invalid MLModelDestinationPath is already reported.
        source = str(destination) if destination else None
    return None if source is None else (source, destination)


def _derived_fields(c: _Connector, location: tuple[str, Path | None]) -> dict[str, object]:
    assert c.arn is not None
    p = c.parameters
    timeout = p.get("LocalInferenceServiceTimeoutSeconds")
    memory = p.get("LocalInferenceServiceMemoryLimitKB")
    return {
        "name": p["LocalInferenceServiceName"],
        "algorithm": c.arn.algorithm,
        "platform": c.arn.platform,
        "connector_id": c.id,
        "connector_arn": c.arn.arn,
        "model_source": location[0],
        "model_destination": location[1],
        "model_resource_id": p.get("MLModelResourceId") or None,
        "timeout_s": float(timeout) if timeout else DEFAULT_TIMEOUT_S,
        "memory_limit_kb": int(memory) if memory else None,
        "gpu": p.get("GPUAcceleration") == "GPU",
        "feedback_config_id": p.get("MLFeedbackConnectorConfigId"),
    }


def _parameter_problems(c: _Connector) -> list[tuple[str, str]]:
    assert c.arn is not None
    optional = _LENIENT_OPTIONAL if c.lenient else frozenset()
    if "model" in c.options:
        optional = optional | {"MLModelDestinationPath"}
    problems = check_parameters(c.arn, c.parameters, optional=optional)
    if c.lenient:
        problems = [(name, "missing: give MLModelDestinationPath or lis's model key")
                    if name == "MLModelDestinationPath" and problem.startswith("missing") else (name, problem)
                    for name, problem in problems]
    return problems


def _build_service(c: _Connector, resources: dict[str, _Resource] | None,
                   found: _Collected) -> ServiceSpec | None:
    problems = _parameter_problems(c) if c.arn else []
    for parameter, problem in problems:
        found.issue(c.where, parameter, problem)
    location = _model_location(c, resources, found)
    complete = c.arn is not None and not problems and location is not None
    data = _derived_fields(c, location) if complete else dict(_PLACEHOLDER)  # type: ignore[arg-type]
    data.update({k: v for k, v in c.options.items() if k != "model"})
    try:
        return ServiceSpec.model_validate(data) if complete else _validate_options(data, c, found)
    except ValidationError as error:
        where = c.options_where or c.where
        found.issues.extend(_issues_from(error, where))
        if not any(e["type"] == "service" for e in error.errors()):
            # Field errors stop pydantic before the cross-field check: run it here.
            found.issues.extend(ConfigIssue(where, p, text) for p, text in _service_problems(data))
        return None


def _validate_options(data: dict[str, object], c: _Connector, found: _Collected) -> None:
    """Check only lis's keys (the connector's own problems are already reported)."""
    try:
        ServiceSpec.model_validate(data)
    except ValidationError as error:
        keep = [issue for issue, e in zip(_issues_from(error, c.options_where or c.where),
                                          _flat_errors(error))
                if e["loc"] and e["loc"][0] in c.options]
        found.issues.extend(keep)
    return None


# --- pydantic errors as ConfigIssues ---------------------------------------------------

# Known keys of nested sections, for "did you mean" on a misspelt key.
_NESTED_KEYS: dict[str, Sequence[str]] = {
    "preprocessing": list(PreprocessingOverrides.__annotations__),
    "autoscaling": list(AutoscalingSpec.model_fields),
    "http": list(HttpSpec.model_fields),
    "model_store": list(ModelStoreSpec.model_fields),
}


def _flat_errors(error: ValidationError) -> list[dict[str, Any]]:
    """One entry per issue (a "service" error carries several problems)."""
    flat: list[dict[str, Any]] = []
    for e in error.errors():
        if e["type"] == "service":
            flat.extend({"loc": (), "problem": p} for p in e["ctx"]["problems"])
        else:
            flat.append(e)
    return flat


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _issues_from(error: ValidationError, where: str, prefix: tuple[str, ...] = ()) -> list[ConfigIssue]:
    issues = []
    for e in _flat_errors(error):
        if "problem" in e:
            issues.append(ConfigIssue(where, *e["problem"]))
            continue
        loc = [*prefix, *(str(part) for part in e["loc"])]
        if e["type"] == "extra_forbidden":
            known = _NESTED_KEYS.get(loc[-2] if len(loc) > 1 else "", ())
            problem = f"unknown key{_suggest(loc[-1], known)}"
        elif e["type"] == "missing":
            problem = f"missing item {loc[-1]}" if loc[-1].isdigit() else "missing"
        elif e["type"] == "value_error":
            problem = e["msg"].removeprefix("Value error, ")
        else:
            problem = f"{e['msg']}, got {_shown(e['input'])}"
        issues.append(ConfigIssue(where, ".".join(loc) or None, problem))
    return issues


# --- the whole configuration ----------------------------------------------------------


def _check_ids(found: _Collected) -> None:
    seen: dict[str, str] = {}
    for c in found.connectors:
        if not c.id_given:
            continue
        if c.id in seen:
            found.issue(c.where, "Id", f"{c.id!r} is already the Id of {seen[c.id]}")
        seen.setdefault(c.id, c.where)


def _check_names(connectors: Sequence[_Connector], found: _Collected) -> None:
    seen: dict[str, str] = {}
    for c in connectors:
        name = c.parameters.get("LocalInferenceServiceName")
        if not isinstance(name, str):
            continue
        if name in seen:
            found.issue(c.where, "LocalInferenceServiceName",
                        f"{name!r} is already the name of the service of {seen[name]}")
        seen.setdefault(name, c.where)


def _feedback(found: _Collected) -> tuple[_Connector | None, Any]:
    """The MLFeedback connector and its parsed spec (serve_app.feedback_config)."""
    declared = [c for c in found.connectors if c.arn is not None and c.arn.is_feedback]
    for extra in declared[1:]:
        found.issue(extra.where, "ConnectorArn",
                    f"a second MLFeedback connector (lis runs one; the first is {declared[0].id!r})")
    where, lis_keys = found.settings.get("feedback", ("", {}))
    if not declared:
        if "feedback" in found.settings:
            found.issue(where, "feedback", "feedback settings given, but no MLFeedback connector "
                                           "is declared")
        return None, None
    if not isinstance(lis_keys, dict):
        found.issue(where, "feedback", f"expected a mapping, got {_shown(lis_keys)}")
        lis_keys = {}
    from serve_app.feedback_config import parse_feedback_connector

    connector = declared[0]
    spec, issues = parse_feedback_connector(connector.id, connector.parameters, lis_keys)
    found.issues.extend(issues)
    return connector, spec


def _check_feedback_ids(services: Sequence[tuple[_Connector, ServiceSpec]],
                        feedback: tuple[_Connector | None, Any], found: _Collected) -> None:
    connector, spec = feedback
    if connector is None or spec is None:
        return  # no feedback connector: the ids are only recorded (as the seed example needs)
    known = set(spec.configs)
    for c, service in services:
        if service.feedback_config_id and service.feedback_config_id not in known:
            found.issue(c.where, "MLFeedbackConnectorConfigId",
                        f"{service.feedback_config_id!r} names no configuration of MLFeedback "
                        f"connector {connector.id!r} (defined: {', '.join(sorted(known)) or 'none'})")


def _setting(found: _Collected, key: str, model: type[BaseModel]) -> Any:
    where, value = found.settings.get(key, ("", {}))
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as error:
        found.issues.extend(_issues_from(error, where, (key,)))
        return model()


def load_config(paths: Sequence[Path | str]) -> LisConfig:
    """Read and validate configuration files into one ``LisConfig``.

    Raises ``ConfigError`` listing every problem in every file.
    """
    sources = tuple(str(path) for path in paths)
    found = _Collected()
    if not paths:
        found.issue("lis", None, "no configuration files given")
    for path in paths:
        _collect_file(Path(path), found)
    _check_ids(found)
    _apply_overlays(found)
    inference = [c for c in found.connectors if c.arn is None or not c.arn.is_feedback]
    _check_names(inference, found)
    feedback = _feedback(found)
    built = [(c, _build_service(c, found.resources, found)) for c in inference]
    services = [(c, spec) for c, spec in built if spec is not None]
    _check_feedback_ids(services, feedback, found)
    http = _setting(found, "http", HttpSpec)
    model_store = _setting(found, "model_store", ModelStoreSpec)
    if found.issues:
        raise ConfigError(", ".join(sources) or "lis", found.issues)
    return LisConfig(services=tuple(spec for _, spec in services), http=http,
                     model_store=model_store, feedback=feedback[1], sources=sources)
