"""From a Greengrass connector (and the ML resource it names) to a ``ServiceSpec``.

``serve_app.config`` collects connectors, resources and lis's own keys from the
files as ``Connector``s and ``Resource``s; this module decides where each
service's model comes from, checks the connector's parameters against the AWS
pages' tables, and builds the typed spec, reporting every problem into one
``Collected``. It also turns pydantic's errors into ``ConfigIssue``s that name
the file, the parameter and the value.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from vocabulary.connectors import (
    SAGEMAKER_JOB_ARN_PATTERN,
    ConnectorArn,
    check_parameters,
)
from vocabulary.errors import ConfigIssue
from vocabulary.limits import DEFAULT_TIMEOUT_S
from vocabulary.specs import (
    AutoscalingSpec,
    HttpSpec,
    ModelStoreSpec,
    PreprocessingOverrides,
    ServiceSpec,
    TlsSpec,
    service_problems,
)

__all__ = [
    "Collected",
    "Connector",
    "Resource",
    "build_service",
    "check_id",
    "collect_resources",
    "flat_errors",
    "issues_from",
    "list_of_mappings",
    "local_path",
    "model_uri",
    "shown",
    "suggest",
]

_ML_RESOURCE_KINDS = ("S3MachineLearningModelResourceData", "SageMakerMachineLearningModelResourceData")
# Other Greengrass resource kinds may share the definition; lis has no use for them.
_OTHER_RESOURCE_KINDS = ("LocalDeviceResourceData", "LocalVolumeResourceData",
                         "SecretsManagerSecretResourceData")
_INVALID = "invalid"
_MODEL_SCHEMES = ("s3", "file")
_ID_PATTERN = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


@dataclass
class Connector:
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
class Resource:
    id: str
    kind: str
    destination: str | None = None
    s3_uri: str | None = None
    sagemaker_job_arn: str | None = None


@dataclass
class Collected:
    connectors: list[Connector] = field(default_factory=list)
    resources: dict[str, Resource] | None = None  # None: no resource definition given
    overlays: list[tuple[str, str, dict[str, object], Path]] = field(default_factory=list)
    settings: dict[str, tuple[str, object]] = field(default_factory=dict)  # key -> (file, value)
    pipelines: list[Any] = field(default_factory=list)  # serve_app.pipeline_config entries
    issues: list[ConfigIssue] = field(default_factory=list)

    def issue(self, where: str, parameter: str | None, problem: str) -> None:
        self.issues.append(ConfigIssue(where, parameter, problem))



def check_id(value: object, where: str, parameter: str, found: Collected) -> bool:
    if isinstance(value, str) and _ID_PATTERN.fullmatch(value):
        return True
    found.issue(where, parameter, f"{value!r} is not a valid id (1 to 128 letters, digits, "
                                  "':', '_' or '-')")
    return False


def suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""




def list_of_mappings(value: object, where: str, what: str, found: Collected) -> list[dict]:
    if not isinstance(value, list):
        found.issue(where, what, f"expected a list, got {shown(value)}")
        return []
    good = [item for item in value if isinstance(item, dict)]
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            found.issue(where, f"{what}[{index}]", f"expected a mapping, got {shown(item)}")
    return good




# --- resources -----------------------------------------------------------------------


def collect_resources(value: object, where: str, what: str, found: Collected) -> None:
    if found.resources is None:
        found.resources = {}
    for raw in list_of_mappings(value, where, what, found):
        resource = _parse_resource(raw, found)
        if resource is None:
            continue
        if resource.id in found.resources:
            found.issue(f"resource {resource.id!r}", "Id", "defined twice")
        found.resources[resource.id] = resource


def _parse_resource(raw: dict, found: Collected) -> Resource | None:
    resource_id = raw.get("Id")
    where = f"resource {resource_id!r}"
    valid_id = check_id(resource_id, where, "Id", found)
    for key in sorted(raw.keys() - {"Id", "Name", "ResourceDataContainer"}):
        found.issue(where, key, f"unknown key{suggest(key, ['Id', 'Name', 'ResourceDataContainer'])}")
    if not isinstance(raw.get("Name"), str) or not raw.get("Name"):
        found.issue(where, "Name", f"missing or not a string: {raw.get('Name')!r}")
    container = raw.get("ResourceDataContainer")
    kinds = list(container) if isinstance(container, dict) else []
    # An invalid resource keeps its id (kind _INVALID, or no data), so connectors that
    # name it get no second issue.
    if len(kinds) != 1:
        found.issue(where, "ResourceDataContainer",
                    f"expected exactly one of {', '.join(_ML_RESOURCE_KINDS)}, got {shown(container)}")
        kind, data = _INVALID, None
    elif kinds[0] in _ML_RESOURCE_KINDS:
        kind, data = kinds[0], _ml_resource_data(container[kinds[0]], kinds[0], where, found)
    elif kinds[0] in _OTHER_RESOURCE_KINDS:
        kind, data = kinds[0], None
    else:
        found.issue(where, "ResourceDataContainer",
                    f"unknown resource kind {kinds[0]!r}{suggest(kinds[0], _ML_RESOURCE_KINDS)}")
        kind, data = _INVALID, None
    return Resource(str(resource_id), kind, **(data or {})) if valid_id else None


def _ml_resource_data(data: object, kind: str, where: str, found: Collected) -> dict[str, str] | None:
    source_key = "S3Uri" if kind.startswith("S3") else "SageMakerJobArn"
    if not isinstance(data, dict):
        found.issue(where, kind, f"expected a mapping, got {data!r}")
        return None
    for key in sorted(data.keys() - {"DestinationPath", source_key, "OwnerSetting"}):
        found.issue(where, f"{kind}.{key}", f"unknown key{suggest(key, ['DestinationPath', source_key])}")
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


def local_path(value: str, base_dir: Path) -> Path:
    # normpath, not resolve(): keep the user's symlinks (a "current" model link stays one).
    return Path(os.path.normpath(base_dir.absolute() / Path(value).expanduser()))


def model_uri(model: object, base_dir: Path, where: str, found: Collected) -> str | None:
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
        return str(local_path(model, base_dir))
    else:
        return model
    return None


def _referenced_resource(c: Connector, resources: dict[str, Resource] | None,
                         found: Collected) -> Resource | None:
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


def _check_resource_agrees(c: Connector, resource: Resource, found: Collected) -> None:
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


def _model_location(c: Connector, resources: dict[str, Resource] | None,
                    found: Collected) -> tuple[str, Path | None] | None:
    """(model_source, model_destination): ``model`` > the resource's S3Uri > MLModelDestinationPath."""
    given = c.parameters.get("MLModelDestinationPath")
    destination = local_path(given, c.base_dir) if isinstance(given, str) and given else None
    resource = _referenced_resource(c, resources, found)
    if "model" in c.options:
        source = model_uri(c.options["model"], c.options_dir or c.base_dir,
                            c.options_where or c.where, found)
    elif resource is not None and resource.s3_uri:
        source = resource.s3_uri
    else:
        # A missing or invalid MLModelDestinationPath is already reported.
        source = str(destination) if destination else None
    return None if source is None else (source, destination)


def _derived_fields(c: Connector, location: tuple[str, Path | None]) -> dict[str, object]:
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


def _parameter_problems(c: Connector) -> list[tuple[str, str]]:
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


def build_service(c: Connector, resources: dict[str, Resource] | None,
                   found: Collected) -> ServiceSpec | None:
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
        found.issues.extend(issues_from(error, where))
        if not any(e["type"] == "service" for e in error.errors()):
            # Field errors stop pydantic before the cross-field check: run it here.
            found.issues.extend(ConfigIssue(where, p, text) for p, text in service_problems(data))
        return None


def _validate_options(data: dict[str, object], c: Connector, found: Collected) -> None:
    """Check only lis's keys (the connector's own problems are already reported)."""
    try:
        ServiceSpec.model_validate(data)
    except ValidationError as error:
        keep = [issue for issue, e in zip(issues_from(error, c.options_where or c.where),
                                          flat_errors(error))
                if e["loc"] and e["loc"][0] in c.options]
        found.issues.extend(keep)
    return None


# --- pydantic errors as ConfigIssues ---------------------------------------------------

# Known keys of nested sections, for "did you mean" on a misspelt key.
_NESTED_KEYS: dict[str, Sequence[str]] = {
    "preprocessing": list(PreprocessingOverrides.__annotations__),
    "autoscaling": list(AutoscalingSpec.model_fields),
    "http": list(HttpSpec.model_fields),
    "tls": list(TlsSpec.model_fields),
    "model_store": list(ModelStoreSpec.model_fields),
}


def flat_errors(error: ValidationError) -> list[dict[str, Any]]:
    """One entry per issue (a "service" error carries several problems)."""
    flat: list[dict[str, Any]] = []
    for e in error.errors():
        if e["type"] == "service":
            flat.extend({"loc": (), "problem": p} for p in e["ctx"]["problems"])
        else:
            flat.append(e)
    return flat


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def issues_from(error: ValidationError, where: str, prefix: tuple[str, ...] = ()) -> list[ConfigIssue]:
    issues = []
    for e in flat_errors(error):
        if "problem" in e:
            issues.append(ConfigIssue(where, *e["problem"]))
            continue
        loc = [*prefix, *(str(part) for part in e["loc"])]
        if e["type"] == "extra_forbidden":
            known = _NESTED_KEYS.get(loc[-2] if len(loc) > 1 else "", ())
            problem = f"unknown key{suggest(loc[-1], known)}"
        elif e["type"] == "missing":
            problem = f"missing item {loc[-1]}" if loc[-1].isdigit() else "missing"
        elif e["type"] == "value_error":
            problem = e["msg"].removeprefix("Value error, ")
        else:
            problem = f"{e['msg']}, got {shown(e['input'])}"
        issues.append(ConfigIssue(where, ".".join(loc) or None, problem))
    return issues


