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

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from serve_app.connector_services import (
    Collected,
    Connector,
    build_service,
    check_id,
    collect_resources,
    issues_from,
    list_of_mappings,
    local_path,
    shown,
    suggest,
)
from vocabulary.connectors import (
    ALGORITHMS,
    PLATFORMS,
    ConnectorArn,
    connector_arn_for,
    parse_connector_arn,
)
from serve_app.pipeline_config import parse_pipelines, pipeline_entries
from vocabulary.errors import ConfigError
from vocabulary.feedback_specs import MqttSpec
from vocabulary.specs import HttpSpec, LisConfig, ModelStoreSpec, ServiceSpec, TlsSpec

__all__ = ["demo_config_path", "load_config"]

# Connector-definition keys AWS's CLI input and output carry besides the definition itself.
_DEFINITION_WRAPPERS = {"InitialVersion", "Definition"}
_DEFINITION_EXTRAS = {"Name", "tags", "AmznClientToken", "Arn", "CreationTimestamp", "Id", "Version"}
_SERVICES_FILE_KEYS = ("services", "connectors", "resources", "http", "model_store", "feedback",
                       "pipelines", "mqtt")
_SERVICE_KEYS = frozenset(ServiceSpec.model_fields) - {
    "name", "algorithm", "platform", "connector_id", "connector_arn", "model_source",
    "model_destination", "model_resource_id", "timeout_s", "memory_limit_kb", "gpu",
    "feedback_config_id",
} | {"model"}
_ENTRY_IDENTITY_KEYS = ("Id", "ConnectorArn", "algorithm", "platform", "connector")


def demo_config_path() -> Path:
    """``configs/demo.yaml``: the demo services ``lis up`` serves without arguments."""
    return Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"



_UNREADABLE = object()


def _read_document(path: Path, found: Collected) -> object:
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



def _collect_file(path: Path, found: Collected) -> None:
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


def _collect_definition(path: Path, document: dict, found: Collected) -> None:
    """A Greengrass connector or resource definition, bare body or wrapped."""
    body: object = document
    wrapper = next((key for key in _DEFINITION_WRAPPERS if key in document), None)
    if wrapper:
        for key in sorted(document.keys() - _DEFINITION_EXTRAS - {wrapper}):
            found.issue(str(path), key, f"unknown key{suggest(key, [wrapper, *_DEFINITION_EXTRAS])}")
        body = document[wrapper]
        if not isinstance(body, dict):
            found.issue(str(path), wrapper, f"expected a mapping, got {body!r}")
            return
    for key in sorted(body.keys() - {"Connectors", "Resources"}):
        found.issue(str(path), key, f"unknown key{suggest(key, ['Connectors', 'Resources'])}")
    if "Connectors" in body:
        for raw in list_of_mappings(body["Connectors"], str(path), "Connectors", found):
            _collect_connector(raw, path.parent, lenient=False, found=found)
    if "Resources" in body:
        collect_resources(body["Resources"], str(path), "Resources", found)


def _collect_services_file(path: Path, document: dict, found: Collected) -> None:
    where = str(path)
    for key in sorted(document.keys() - set(_SERVICES_FILE_KEYS)):
        found.issue(where, key, f"unknown key{suggest(key, _SERVICES_FILE_KEYS)}")
    for raw in list_of_mappings(document.get("connectors", []), where, "connectors", found):
        _collect_connector(raw, path.parent, lenient=True, found=found)
    if "resources" in document:
        collect_resources(document["resources"], where, "resources", found)
    for index, entry in enumerate(_entries(document.get("services", []), where, found)):
        _collect_entry(entry, f"{where}: services[{index}]", path.parent, found)
    if "pipelines" in document:
        found.pipelines += pipeline_entries(document["pipelines"], where, path.parent, found)
    for key in ("http", "model_store", "feedback", "mqtt"):
        if key in document:
            if key in found.settings:
                found.issue(where, key, f"already given in {found.settings[key][0]}")
            else:
                found.settings[key] = (where, document[key])


def _entries(value: object, where: str, found: Collected) -> list[dict | None]:
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


def _parse_arn(value: object, where: str, found: Collected) -> ConnectorArn | None:
    try:
        return parse_connector_arn(value)
    except ValueError as error:
        found.issue(where, "ConnectorArn", str(error))
        return None


def _collect_connector(raw: dict, base_dir: Path, *, lenient: bool, found: Collected) -> None:
    """A connector in the Greengrass shape: ``{Id, ConnectorArn, Parameters}``."""
    connector_id = raw.get("Id")
    where = f"connector {connector_id!r}"
    if not check_id(connector_id, where, "Id", found):
        connector_id = str(connector_id)
    for key in sorted(raw.keys() - {"Id", "ConnectorArn", "Parameters"}):
        found.issue(where, key, f"unknown key{suggest(key, ['Id', 'ConnectorArn', 'Parameters'])}")
    if "ConnectorArn" not in raw:
        found.issue(where, "ConnectorArn", "missing")
    arn = _parse_arn(raw["ConnectorArn"], where, found) if "ConnectorArn" in raw else None
    parameters = raw.get("Parameters", {})
    if not isinstance(parameters, dict):
        found.issue(where, "Parameters", f"expected a mapping of strings, got {parameters!r}")
        parameters = {}
    if lenient:
        parameters = _loosen(parameters)
    found.connectors.append(Connector(where, connector_id, arn, dict(parameters), base_dir, lenient))


def _loosen(parameters: Mapping[str, object]) -> dict[str, object]:
    """A services file may write whole numbers unquoted and an empty value as nothing."""
    def loose(value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return "" if value is None else value
    return {name: loose(value) for name, value in parameters.items()}


def _collect_entry(entry: dict | None, where: str, base_dir: Path, found: Collected) -> None:
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
        found.issue(where, key, f"unknown key{suggest(key, sorted(_SERVICE_KEYS))}")
    name = parameters.get("LocalInferenceServiceName")
    connector_id = entry.get("Id", name if isinstance(name, str) else where)
    if "Id" in entry:
        check_id(connector_id, where, "Id", found)
    found.connectors.append(Connector(
        where, str(connector_id), arn, _loosen(parameters), base_dir, lenient=True,
        id_given="Id" in entry, options=options, options_where=where, options_dir=base_dir))


def _entry_arn(entry: dict, where: str, found: Collected) -> ConnectorArn | None:
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


def _collect_overlay(entry: dict, where: str, base_dir: Path, found: Collected) -> None:
    options = {k: v for k, v in entry.items() if k != "connector"}
    for key in sorted(options.keys() - _SERVICE_KEYS):
        hint = (" (connector parameters belong in the connector definition)"
                if key[:1].isupper() else suggest(key, sorted(_SERVICE_KEYS)))
        found.issue(where, key, f"unknown key{hint}")
    options = {k: v for k, v in options.items() if k in _SERVICE_KEYS}
    found.overlays.append((where, str(entry["connector"]), options, base_dir))


def _apply_overlays(found: Collected) -> None:
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


# --- the whole configuration ----------------------------------------------------------


def _check_ids(found: Collected) -> None:
    seen: dict[str, str] = {}
    for c in found.connectors:
        if not c.id_given:
            continue
        if c.id in seen:
            found.issue(c.where, "Id", f"{c.id!r} is already the Id of {seen[c.id]}")
        seen.setdefault(c.id, c.where)


def _check_names(connectors: Sequence[Connector], found: Collected) -> None:
    seen: dict[str, str] = {}
    for c in connectors:
        name = c.parameters.get("LocalInferenceServiceName")
        if not isinstance(name, str):
            continue
        if name in seen:
            found.issue(c.where, "LocalInferenceServiceName",
                        f"{name!r} is already the name of the service of {seen[name]}")
        seen.setdefault(name, c.where)


def _feedback(found: Collected) -> tuple[Connector | None, Any]:
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
        found.issue(where, "feedback", f"expected a mapping, got {shown(lis_keys)}")
        lis_keys = {}
    from serve_app.feedback_config import parse_feedback_connector

    connector = declared[0]
    spec, issues = parse_feedback_connector(connector.id, connector.parameters, lis_keys)
    found.issues.extend(issues)
    return connector, spec


def _check_feedback_ids(services: Sequence[tuple[Connector, ServiceSpec]],
                        feedback: tuple[Connector | None, Any], found: Collected) -> None:
    connector, spec = feedback
    if connector is None or spec is None:
        return  # no feedback connector: the ids are only recorded (as the seed example needs)
    known = set(spec.configs)
    for c, service in services:
        if service.feedback_config_id and service.feedback_config_id not in known:
            found.issue(c.where, "MLFeedbackConnectorConfigId",
                        f"{service.feedback_config_id!r} names no configuration of MLFeedback "
                        f"connector {connector.id!r} (defined: {', '.join(sorted(known)) or 'none'})")


def _setting(found: Collected, key: str, model: type[BaseModel]) -> Any:
    where, value = found.settings.get(key, ("", {}))
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as error:
        found.issues.extend(issues_from(error, where, (key,)))
        return model()


def _with_tls_files(http: HttpSpec, found: Collected) -> HttpSpec:
    """``http.tls`` with its paths made absolute (relative to their file) and checked."""
    if http.tls is None:
        return http
    where = found.settings["http"][0]
    base = Path(where).parent
    cert, key = (local_path(str(p), base) for p in (http.tls.cert_file, http.tls.key_file))
    for name, path in (("http.tls.cert_file", cert), ("http.tls.key_file", key)):
        if not path.is_file():
            found.issue(where, name, f"no such file: {path}")
    if key.is_file() and key.stat().st_mode & 0o077:
        # The key is the server's identity: as with the token file, others may not read it.
        found.issue(where, "http.tls.key_file", f"{key} is readable by group or others: "
                                                "chmod 600 it")
    return http.model_copy(update={"tls": TlsSpec(cert_file=cert, key_file=key)})


def _broker(found: Collected, feedback: Any) -> MqttSpec | None:
    """Where pipelines publish: ``mqtt:``, else ML Feedback's broker, else None (the default)."""
    if "mqtt" in found.settings:
        return _setting(found, "mqtt", MqttSpec)
    return feedback.mqtt if feedback is not None else None


def load_config(paths: Sequence[Path | str]) -> LisConfig:
    """Read and validate configuration files into one ``LisConfig``.

    Raises ``ConfigError`` listing every problem in every file.
    """
    sources = tuple(str(path) for path in paths)
    found = Collected()
    if not paths:
        found.issue("lis", None, "no configuration files given")
    for path in paths:
        _collect_file(Path(path), found)
    _check_ids(found)
    _apply_overlays(found)
    inference = [c for c in found.connectors if c.arn is None or not c.arn.is_feedback]
    _check_names(inference, found)
    feedback = _feedback(found)
    built = [(c, build_service(c, found.resources, found)) for c in inference]
    services = [(c, spec) for c, spec in built if spec is not None]
    _check_feedback_ids(services, feedback, found)
    http = _with_tls_files(_setting(found, "http", HttpSpec), found)
    model_store = _setting(found, "model_store", ModelStoreSpec)
    pipelines = parse_pipelines(found.pipelines, [spec for _, spec in services], feedback[1],
                                found)
    if found.issues:
        raise ConfigError(", ".join(sources) or "lis", found.issues)
    return LisConfig(services=tuple(spec for _, spec in services), http=http,
                     model_store=model_store, feedback=feedback[1], sources=sources,
                     pipelines=pipelines, mqtt=_broker(found, feedback[1]))

