"""The ML Feedback connector's configuration, read into ``vocabulary.feedback_specs``.

Two sources meet here:

* the Greengrass connector itself, in the connector definition, with ARN
  ``arn:aws:greengrass:<region>::/connectors/MLFeedback/versions/1`` and two
  string parameters: ``FeedbackConfigurationMap`` (a JSON *string* mapping
  feedback config ids to configurations) and ``RequestLimit``
  (``^$|^[0-9]{1,3}$``);
* lis's own keys, which say where "S3" and the MQTT broker are, under a
  top-level ``feedback:`` section of the services file. Every key is optional::

    feedback:
      storage:
        # An S3 endpoint (AWS or any S3-compatible store) for boto3 ...
        s3_endpoint_url: http://minio.local:9000   # absent: AWS's own endpoint
        region: us-west-2
        access_key_id: AKIA...       # absent (both): boto3's default chain,
        secret_access_key: ...       #   e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
        # ... or, for offline devices, a local folder; each bucket is a sub-folder:
        # s3_endpoint_url: file:///var/lib/lis/feedback-store
      mqtt:
        host: 127.0.0.1
        port: 1883
        client_id: lis-feedback-edge-1   # absent: lis-feedback-<hostname>-<pid>
        username: lis
        password: secret
        keepalive_s: 60
        tls:                             # absent: plain TCP
          ca_file: /etc/lis/mqtt-ca.pem
          cert_file: /etc/lis/mqtt.crt   # cert_file and key_file: both or neither
          key_file: /etc/lis/mqtt.key
      spool:
        directory: /var/lib/lis/feedback-spool
        max_bytes: 1073741824

``parse_feedback_connector`` validates both at once, field by field, and
returns every problem as a ``ConfigIssue`` that names the connector, the
feedback config id and the field, and quotes the value; it never raises for a
user mistake. The result, ``FeedbackConnectorSpec``, is all a feedback
pipeline needs; nothing downstream reads the raw JSON or YAML again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vocabulary.errors import ConfigIssue
from vocabulary.feedback_specs import (
    CONFIG_ID_PATTERN,
    REQUEST_LIMIT_PATTERN,
    STRATEGY_NAMES,
    FeedbackConfig,
    FeedbackConnectorSpec,
    MqttSpec,
    SpoolSpec,
    StorageSpec,
)

__all__ = ["parse_feedback_connector"]

_PARAMETERS = ("FeedbackConfigurationMap", "RequestLimit")

class _LisKeys(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    storage: StorageSpec = StorageSpec()
    mqtt: MqttSpec = MqttSpec()
    spool: SpoolSpec = SpoolSpec()


# --- parsing ---------------------------------------------------------------------


def parse_feedback_connector(
    connector_id: str, parameters: Mapping[str, Any], lis_keys: Mapping[str, Any] | None,
) -> tuple[FeedbackConnectorSpec | None, list[ConfigIssue]]:
    """Validate an MLFeedback connector's parameters and lis's ``feedback:`` keys.

    Returns ``(spec, [])`` when everything is valid, otherwise ``(None, issues)``
    with every problem found.
    """
    where = f"connector {connector_id!r}"
    issues = [ConfigIssue(where, name, "unknown parameter of the MLFeedback connector")
              for name in parameters if name not in _PARAMETERS]
    configs = _parse_configuration_map(where, parameters.get("FeedbackConfigurationMap"), issues)
    request_limit = _parse_request_limit(where, parameters.get("RequestLimit", ""), issues)
    keys = _parse_lis_keys(lis_keys or {}, issues)
    if keys is not None:
        _check_spool_directory(keys.spool, issues)
    if configs is not None and keys is not None:
        _check_local_prefixes(where, configs, keys.storage, issues)
    if issues or configs is None or keys is None:
        return None, issues
    spec = FeedbackConnectorSpec(configs=configs, request_limit=request_limit,
                                 storage=keys.storage, mqtt=keys.mqtt, spool=keys.spool)
    return spec, []


def _parse_configuration_map(
    where: str, raw: Any, issues: list[ConfigIssue],
) -> dict[str, FeedbackConfig] | None:
    parameter = "FeedbackConfigurationMap"
    if raw is None:
        issues.append(ConfigIssue(where, parameter, "is required"))
        return None
    if not isinstance(raw, str):
        issues.append(ConfigIssue(where, parameter,
                                  f"must be a JSON string (all connector parameters are strings), "
                                  f"got {type(raw).__name__} {_shown(raw)}"))
        return None
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        issues.append(ConfigIssue(where, parameter, f"{_shown(raw)} is not valid JSON: {exc}"))
        return None
    if not isinstance(document, dict) or not document:
        issues.append(ConfigIssue(where, parameter,
                                  f"{_shown(raw)} must be a JSON object with at least one config"))
        return None
    configs = {}
    for config_id, body in document.items():
        config = _parse_config(f"{where} feedback config {config_id!r}", config_id, body, issues)
        if config is not None:
            configs[config_id] = config
    return configs


def _parse_config(where: str, config_id: str, body: Any,
                  issues: list[ConfigIssue]) -> FeedbackConfig | None:
    valid_id = re.fullmatch(CONFIG_ID_PATTERN, config_id) is not None
    if not valid_id:
        issues.append(ConfigIssue(where, "config id",
                                  f"{config_id!r} does not match {CONFIG_ID_PATTERN}"))
    if not isinstance(body, dict):
        issues.append(ConfigIssue(where, None, f"{_shown(body)} must be a JSON object"))
        return None
    try:
        config = FeedbackConfig.model_validate(body)
    except ValidationError as exc:
        issues.extend(_issues_from(where, exc))
        return None
    return config if valid_id else None


def _parse_request_limit(where: str, raw: Any, issues: list[ConfigIssue]) -> int | None:
    if not isinstance(raw, str) or re.fullmatch(REQUEST_LIMIT_PATTERN, raw) is None:
        issues.append(ConfigIssue(where, "RequestLimit",
                                  f"{raw!r} does not match {REQUEST_LIMIT_PATTERN}"))
        return None
    if raw == "":
        return None
    if int(raw) == 0:
        # The pattern allows it, but a limit of 0 would refuse every sample.
        issues.append(ConfigIssue(where, "RequestLimit",
                                  "'0' would refuse every sample: use at least 1, "
                                  "or '' for no limit"))
        return None
    return int(raw)


def _parse_lis_keys(raw: Mapping[str, Any], issues: list[ConfigIssue]) -> _LisKeys | None:
    if not isinstance(raw, Mapping):
        issues.append(ConfigIssue("feedback", None, f"{_shown(raw)} must be a mapping"))
        return None
    try:
        return _LisKeys.model_validate(dict(raw))
    except ValidationError as exc:
        issues.extend(_lis_key_issues(exc))
        return None


def _check_spool_directory(spool: SpoolSpec, issues: list[ConfigIssue]) -> None:
    # The spool keeps tmp/, samples/ and a lock in its folder: never a home or the root.
    folder = spool.directory.expanduser().resolve()
    if folder in (Path.home().resolve(), Path(folder.anchor)):
        issues.append(ConfigIssue("feedback.spool", "directory",
                                  f"{str(spool.directory)!r} is {folder}: give the spool a folder "
                                  "of its own, e.g. ~/.local/state/lis/feedback-spool"))


def _check_local_prefixes(where: str, configs: Mapping[str, FeedbackConfig],
                          storage: StorageSpec, issues: list[ConfigIssue]) -> None:
    # In a local store the key becomes a path: it must stay inside the bucket folder.
    if storage.local_root is None:
        return
    for config_id, config in configs.items():
        segments = config.s3_prefix.split("/")
        if ".." in segments or config.s3_prefix.startswith("/"):
            issues.append(ConfigIssue(f"{where} feedback config {config_id!r}", "s3-prefix",
                                      f"{config.s3_prefix!r} would leave the bucket folder of "
                                      "the local store"))


# --- pydantic errors -> ConfigIssue -------------------------------------------------


def _issues_from(where: str, error: ValidationError) -> list[ConfigIssue]:
    return [ConfigIssue(where, _location(item) or None, _problem(item))
            for item in error.errors(include_url=False)]


def _lis_key_issues(error: ValidationError) -> list[ConfigIssue]:
    # Name the section in `where` ("feedback.mqtt") and the key in `parameter`.
    issues = []
    for item in error.errors(include_url=False):
        section, _, key = _location(item).partition(".")
        if not key:
            section, key = "", section
        issues.append(ConfigIssue(f"feedback.{section}" if section else "feedback",
                                  key or None, _problem(item)))
    return issues


def _location(item: Mapping[str, Any]) -> str:
    # A discriminated union puts the tag ("ENTROPY") in the path: the user never wrote it.
    parts = [str(part) for part in item["loc"] if str(part) not in STRATEGY_NAMES]
    if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
        parts.append("strategy-name")
    return ".".join(parts)


def _problem(item: Mapping[str, Any]) -> str:
    kind, value = item["type"], item.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        # Not its value: a misspelt "password" would print the password.
        return "unknown key"
    if kind == "union_tag_invalid":
        tag = item.get("ctx", {}).get("tag")
        return f"strategy-name {tag!r} is not one of {', '.join(STRATEGY_NAMES)}"
    if kind == "union_tag_not_found":
        return f"strategy-name is required: one of {', '.join(STRATEGY_NAMES)}"
    if kind == "string_pattern_mismatch":
        return f"{_shown(value)} does not match {item['ctx']['pattern']}"
    if kind == "value_error":
        return str(item["ctx"]["error"])
    return f"{_shown(value)}: {item['msg'].replace('Input should', 'should')}"


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
