"""The Greengrass ML connectors as the AWS pages document them: ARNs and parameter tables.

A connector ARN names a family (``ImageClassification``, ``ObjectDetection``,
``MLFeedback``), a platform suffix and a version. Each inference family has a
table of parameters; every value is a string that must match the documented
pattern. This module knows those facts and nothing about files: ``config``
reads the files and turns the problems found here into ``ConfigIssue``s.

The pages write some patterns unanchored (``[1-9][0-9]*`` on the image
classification page, ``^[1-9][0-9]*$`` on the object detection page); both mean
the whole value, so every pattern here is matched with ``fullmatch``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "ALGORITHMS",
    "FEEDBACK_FAMILY",
    "KNOWN_VERSIONS",
    "PLATFORMS",
    "SAGEMAKER_JOB_ARN_PATTERN",
    "SERVICE_NAME_PATTERN",
    "Algorithm",
    "ConnectorArn",
    "ParameterRule",
    "Platform",
    "check_parameters",
    "connector_arn_for",
    "family_parameters",
    "parse_connector_arn",
]

Algorithm = Literal["image-classification", "object-detection"]
Platform = Literal["x86-64", "ARMv7", "Aarch64JTX2"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
PLATFORMS: tuple[Platform, ...] = get_args(Platform)

FEEDBACK_FAMILY = "MLFeedback"
# family -> the connector name prefix and the algorithm type its service answers to
_INFERENCE_FAMILIES: dict[str, Algorithm] = {
    "ImageClassification": "image-classification",
    "ObjectDetection": "object-detection",
}
# family -> versions AWS published (image classification v2 added MLFeedbackConnectorConfigId)
KNOWN_VERSIONS: dict[str, tuple[int, ...]] = {
    "ImageClassification": (1, 2),
    "ObjectDetection": (1,),
    FEEDBACK_FAMILY: (1,),
}

_ARN = re.compile(
    r"arn:(?P<partition>aws(?:-[a-z]+)*):greengrass:(?P<region>[^:]*)::"
    r"/connectors/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"
)
# A real region (us-west-2, cn-north-1, us-gov-west-1) or the literal "region" the
# AWS pages use as a placeholder, so their CLI examples load unchanged.
_REGION = re.compile(r"region|[a-z]{2}(?:-[a-z]+)+-[0-9]+")
_PLACEHOLDER_REGION = "region"

SERVICE_NAME_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9-]{1,62}"
_POSITIVE_INTEGER = r"[1-9][0-9]*"
# The image classification page's pattern says "training-job/" (SageMaker's real ARN
# form) but its own CLI examples write "training-job:"; accept both so the examples load.
SAGEMAKER_JOB_ARN_PATTERN = r"arn:aws:sagemaker:[a-zA-Z0-9-]+:[0-9]+:training-job[/:][a-zA-Z0-9][a-zA-Z0-9-]+"


@dataclass(frozen=True)
class ParameterRule:
    """One documented connector parameter."""

    name: str
    pattern: str  # matched against the whole value
    required: bool
    meaning: str  # what a valid value is, in words, for error messages

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not valid for this parameter, or None."""
        if not isinstance(value, str):
            return f"{value!r} is not a string (connector parameters are strings)"
        if re.fullmatch(self.pattern, value) is None:
            return f"{value!r} does not match {self.pattern!r} ({self.meaning})"
        return None


_DESTINATION = ParameterRule("MLModelDestinationPath", r".+", True, "a non-empty path")
_RESOURCE_ID = ParameterRule(
    "MLModelResourceId", r"[a-zA-Z0-9:_-]+", True,
    "letters, digits, ':', '_' and '-'",
)
_SAGEMAKER_JOB = ParameterRule(
    "MLModelSageMakerJobArn", SAGEMAKER_JOB_ARN_PATTERN, True,
    "arn:aws:sagemaker:<region>:<account>:training-job/<name>",
)
_SERVICE_NAME = ParameterRule(
    "LocalInferenceServiceName", SERVICE_NAME_PATTERN, True,
    "2 to 63 letters, digits or '-', starting with a letter or digit",
)
_TIMEOUT = ParameterRule(
    "LocalInferenceServiceTimeoutSeconds", _POSITIVE_INTEGER, True,
    "a whole number of seconds, at least 1",
)
_MEMORY = ParameterRule(
    "LocalInferenceServiceMemoryLimitKB", _POSITIVE_INTEGER, True,
    "a whole number of KB, at least 1",
)
_GPU = ParameterRule("GPUAcceleration", r"CPU|GPU", True, "CPU or GPU")
_FEEDBACK_ID = ParameterRule(
    "MLFeedbackConnectorConfigId", r"|" + SERVICE_NAME_PATTERN, False,
    "empty, or the id of an ML Feedback configuration",
)


@dataclass(frozen=True)
class ConnectorArn:
    """A parsed connector ARN."""

    arn: str
    region: str
    family: str  # ImageClassification | ObjectDetection | MLFeedback
    platform: Platform | None  # None for MLFeedback
    version: int

    @property
    def name(self) -> str:
        return self.family + (self.platform or "")

    @property
    def algorithm(self) -> Algorithm | None:
        return _INFERENCE_FAMILIES.get(self.family)

    @property
    def is_feedback(self) -> bool:
        return self.family == FEEDBACK_FAMILY


def _known_names() -> str:
    names = [f"{family}{platform}" for family in _INFERENCE_FAMILIES for platform in PLATFORMS]
    return ", ".join([*names, FEEDBACK_FAMILY])


def _split_name(name: str) -> tuple[str, Platform | None] | None:
    if name == FEEDBACK_FAMILY:
        return FEEDBACK_FAMILY, None
    for family in _INFERENCE_FAMILIES:
        suffix = name.removeprefix(family)
        if suffix != name and suffix in PLATFORMS:
            return family, suffix  # type: ignore[return-value]
    return None


def parse_connector_arn(arn: object) -> ConnectorArn:
    """Parse a connector ARN; ``ValueError`` says what is wrong, quoting the ARN."""
    match = _ARN.fullmatch(arn) if isinstance(arn, str) else None
    if match is None:
        raise ValueError(
            f"{arn!r} is not a connector ARN "
            "(arn:aws:greengrass:<region>::/connectors/<Name>/versions/<n>)"
        )
    if _REGION.fullmatch(match["region"]) is None:
        raise ValueError(f"{arn!r} names no valid AWS region ({match['region']!r})")
    split = _split_name(match["name"])
    if split is None:
        raise ValueError(
            f"{arn!r} names connector {match['name']!r}, which lis does not run "
            f"(known: {_known_names()})"
        )
    family, platform = split
    versions = KNOWN_VERSIONS[family]
    if match["version"] not in {str(v) for v in versions}:
        raise ValueError(
            f"{arn!r}: {match['name']} has no version {match['version']!r} "
            f"(known: {', '.join(map(str, versions))})"
        )
    return ConnectorArn(arn, match["region"], family, platform, int(match["version"]))


def connector_arn_for(algorithm: Algorithm, platform: Platform) -> str:
    """The newest connector ARN for an algorithm and platform (lis's short form)."""
    family = next(f for f, a in _INFERENCE_FAMILIES.items() if a == algorithm)
    version = max(KNOWN_VERSIONS[family])
    return f"arn:aws:greengrass:{_PLACEHOLDER_REGION}::/connectors/{family}{platform}/versions/{version}"


def family_parameters(connector: ConnectorArn) -> dict[str, ParameterRule]:
    """The documented parameters of an inference connector, by name."""
    assert not connector.is_feedback, "MLFeedback parameters belong to serve_app.feedback_config"
    rules = [_DESTINATION, _RESOURCE_ID, _SERVICE_NAME, _TIMEOUT, _MEMORY]
    if connector.family == "ImageClassification":
        rules.append(_SAGEMAKER_JOB)
    # Object detection v1 and image classification v2 let a service feed ML Feedback.
    if connector.family == "ObjectDetection" or connector.version >= 2:
        rules.append(_FEEDBACK_ID)
    # The pages: GPUAcceleration "applies to the ... Aarch64 JTX2 connector only".
    if connector.platform == "Aarch64JTX2":
        rules.append(_GPU)
    return {rule.name: rule for rule in rules}


_ALL_PARAMETERS = frozenset(
    {_DESTINATION.name, _RESOURCE_ID.name, _SAGEMAKER_JOB.name, _SERVICE_NAME.name,
     _TIMEOUT.name, _MEMORY.name, _GPU.name, _FEEDBACK_ID.name}
)


def _not_applicable(connector: ConnectorArn, name: str) -> str:
    if name == _GPU.name:
        return f"it applies to the Aarch64JTX2 connectors only; {connector.name} runs on the CPU"
    if name == _FEEDBACK_ID.name:
        return (f"{connector.name} version {connector.version} does not take it "
                "(image classification added it in version 2)")
    return f"{connector.name} does not take it (image classification connectors do)"


def check_parameters(
    connector: ConnectorArn,
    parameters: Mapping[str, object],
    *,
    optional: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Every problem with an inference connector's parameters, as (parameter, problem).

    ``optional`` names documented-required parameters the caller supplies otherwise
    (a lis services file has defaults and its own ``model`` key for some).
    """
    rules = family_parameters(connector)
    problems: list[tuple[str, str]] = []
    for name, value in parameters.items():
        if name in rules:
            problem = rules[name].problem(value)
        elif name in _ALL_PARAMETERS:
            problem = f"{value!r} given, but {_not_applicable(connector, name)}"
        else:
            problem = (f"{value!r} given for an unknown parameter of {connector.name} "
                       f"(known: {', '.join(rules)})")
        if problem:
            problems.append((name, problem))
    for name, rule in rules.items():
        if rule.required and name not in parameters and name not in optional:
            problems.append((name, f"missing (required by {connector.name}: {rule.meaning})"))
    return problems
