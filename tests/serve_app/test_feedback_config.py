"""The MLFeedback connector's configuration: every bad field is reported, named and quoted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.feedback_config import parse_feedback_connector
from vocabulary.feedback_specs import (
    Entropy,
    FeedbackConfig,
    LeastConfidence,
    Margin,
    RandomSampling,
)

GOOD = {"s3-bucket-name": "feedback.bucket-1", "content-type": "image/jpeg"}


def parse(configuration_map: Any, request_limit: str = "", lis_keys: Any = None):
    parameters = {"FeedbackConfigurationMap": configuration_map, "RequestLimit": request_limit}
    return parse_feedback_connector("fb", parameters, lis_keys)


def parse_configs(configs: dict[str, Any], **kwargs: Any):
    return parse(json.dumps(configs), **kwargs)


def test_a_valid_connector_parses_into_typed_specs() -> None:
    configs = {
        "random": {**GOOD, "s3-prefix": "field/images", "file-ext": "jpg",
                   "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING", "rate": 0.5}},
        "least": {**GOOD, "sampling-strategy": {"strategy-name": "LEAST_CONFIDENCE",
                                                "threshold": 0.4}},
        "margin": {**GOOD, "sampling-strategy": {"strategy-name": "MARGIN", "threshold": 1}},
        "entropy": {**GOOD, "sampling-strategy": {"strategy-name": "ENTROPY", "threshold": 2.5}},
        "all": GOOD,
    }
    lis_keys = {"storage": {"s3_endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1",
                            "access_key_id": "key", "secret_access_key": "s3cr3t-value"},
                "mqtt": {"host": "broker", "port": 8883, "client_id": "edge-1",
                         "tls": {"ca_file": "/etc/ca.pem"}},
                "spool": {"directory": "/var/lib/lis/spool", "max_bytes": 1000}}

    spec, issues = parse_configs(configs, request_limit="25", lis_keys=lis_keys)

    assert issues == []
    assert spec is not None and spec.request_limit == 25
    assert spec.configs["random"] == FeedbackConfig(
        s3_bucket_name="feedback.bucket-1", content_type="image/jpeg", s3_prefix="field/images",
        file_ext="jpg", sampling_strategy=RandomSampling(rate=0.5))
    assert spec.configs["least"].sampling_strategy == LeastConfidence(threshold=0.4)
    assert spec.configs["margin"].sampling_strategy == Margin(threshold=1.0)
    assert spec.configs["entropy"].sampling_strategy == Entropy(threshold=2.5)
    assert spec.configs["all"].sampling_strategy is None
    assert spec.storage.local_root is None and spec.storage.region == "eu-west-1"
    assert spec.storage.secret_access_key.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(spec)
    assert spec.mqtt.port == 8883 and spec.spool.max_bytes == 1000


def test_empty_request_limit_and_missing_lis_keys_mean_defaults() -> None:
    spec, issues = parse_configs({"cfg": GOOD})
    assert issues == [] and spec is not None
    assert spec.request_limit is None
    assert spec.mqtt.host == "127.0.0.1" and spec.mqtt.port == 1883


def test_a_file_url_names_a_local_store() -> None:
    spec, issues = parse_configs({"cfg": GOOD},
                                 lis_keys={"storage": {"s3_endpoint_url": "file:///srv/feedback"}})
    assert issues == [] and spec is not None
    assert str(spec.storage.local_root) == "/srv/feedback"


@pytest.mark.parametrize(("config", "field", "quoted"), [
    ({**GOOD, "s3-bucket-name": "Upper_Case"}, "s3-bucket-name", "'Upper_Case'"),
    ({**GOOD, "s3-bucket-name": "ab"}, "s3-bucket-name", "'ab'"),
    ({"content-type": "image/jpeg"}, "s3-bucket-name", "required"),
    ({"s3-bucket-name": "bucket"}, "content-type", "required"),
    ({**GOOD, "colour": "blue"}, "colour", "unknown key"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "TOP_K", "rate": 0.1}},
     "sampling-strategy.strategy-name", "'TOP_K'"),
    ({**GOOD, "sampling-strategy": {"rate": 0.1}}, "sampling-strategy.strategy-name", "required"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING", "rate": 1.5}},
     "sampling-strategy.rate", "1.5"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING", "rate": "0.5"}},
     "sampling-strategy.rate", "'0.5'"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING"}},
     "sampling-strategy.rate", "required"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "LEAST_CONFIDENCE", "threshold": -0.1}},
     "sampling-strategy.threshold", "-0.1"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "MARGIN", "threshold": 2}},
     "sampling-strategy.threshold", "2"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "ENTROPY", "threshold": -1}},
     "sampling-strategy.threshold", "-1"),
    ({**GOOD, "sampling-strategy": {"strategy-name": "ENTROPY", "rate": 0.5, "threshold": 1}},
     "sampling-strategy.rate", "unknown key"),
])
def test_each_bad_field_is_named_with_its_config_id(config: dict[str, Any], field: str,
                                                     quoted: str) -> None:
    spec, issues = parse_configs({"good-one": GOOD, "cfg-7": config})

    assert spec is None
    assert len(issues) == 1, issues
    (issue,) = issues
    assert issue.where == "connector 'fb' feedback config 'cfg-7'"
    assert issue.parameter == field
    assert quoted in issue.problem


def test_a_misspelt_key_does_not_echo_its_value() -> None:
    """Issue #17 (low): old code answered "unknown key (value 's3cr3t')" for a misspelt
    password, printing it into `lis validate`'s output and logs."""
    spec, issues = parse_configs({"good-one": GOOD},
                                 lis_keys={"mqtt": {"passwrd": "s3cr3t-value"}})
    assert spec is None
    assert [str(issue) for issue in issues] == ["feedback.mqtt: passwrd: unknown key"]


@pytest.mark.parametrize("directory", ["~", "/"])
def test_a_spool_in_a_home_or_the_root_is_refused(directory: str) -> None:
    """Issue #17 (low): old code accepted ``spool.directory: ~``, and recovery then deleted
    every file in ``~/tmp`` (what the spool takes for its half-written samples)."""
    spec, issues = parse_configs({"good-one": GOOD}, lis_keys={"spool": {"directory": directory}})
    assert spec is None
    (issue,) = issues
    assert (issue.where, issue.parameter) == ("feedback.spool", "directory")
    assert "give the spool a folder of its own" in issue.problem


@pytest.mark.parametrize("config_id", ["-leading-dash", "x", "under_score", "a" * 64])
def test_a_bad_config_id_is_reported(config_id: str) -> None:
    spec, issues = parse_configs({config_id: GOOD})
    assert spec is None
    assert [(issue.where, issue.parameter) for issue in issues] == [
        (f"connector 'fb' feedback config {config_id!r}", "config id")]
    assert repr(config_id) in issues[0].problem


def test_every_problem_is_reported_at_once() -> None:
    configs = {"one": {**GOOD, "s3-bucket-name": "BAD"},
               "two": {**GOOD, "sampling-strategy": {"strategy-name": "MARGIN", "threshold": 9}}}
    spec, issues = parse_configs(configs, request_limit="1000",
                                 lis_keys={"mqtt": {"port": 0}, "colour": "blue"})
    assert spec is None
    assert sorted(str(issue) for issue in issues) == sorted([
        "connector 'fb' feedback config 'one': s3-bucket-name: "
        "'BAD' does not match ^[a-z0-9\\.\\-]{3,63}$",
        "connector 'fb' feedback config 'two': sampling-strategy.threshold: "
        "9: should be less than or equal to 1",
        "connector 'fb': RequestLimit: '1000' does not match ^$|^[0-9]{1,3}$",
        "feedback.mqtt: port: 0: should be greater than or equal to 1",
        "feedback: colour: unknown key",
    ])


@pytest.mark.parametrize(("raw", "expected"), [
    (None, "is required"),
    ({"cfg": GOOD}, "must be a JSON string"),
    ("{not json", "is not valid JSON"),
    ("[]", "must be a JSON object"),
    ("{}", "at least one config"),
])
def test_the_configuration_map_must_be_a_json_object_string(raw: Any, expected: str) -> None:
    parameters = {} if raw is None else {"FeedbackConfigurationMap": raw}
    spec, issues = parse_feedback_connector("fb", parameters, None)
    assert spec is None
    assert [(issue.where, issue.parameter) for issue in issues] == [
        ("connector 'fb'", "FeedbackConfigurationMap")]
    assert expected in issues[0].problem


@pytest.mark.parametrize("limit", ["1000", "ten", "-1", "0"])
def test_a_bad_request_limit_is_reported(limit: str) -> None:
    spec, issues = parse_configs({"cfg": GOOD}, request_limit=limit)
    assert spec is None
    assert [(issue.where, issue.parameter) for issue in issues] == [("connector 'fb'",
                                                                     "RequestLimit")]
    assert repr(limit) in issues[0].problem


def test_an_unknown_connector_parameter_is_reported() -> None:
    spec, issues = parse_feedback_connector(
        "fb", {"FeedbackConfigurationMap": json.dumps({"cfg": GOOD}), "Limit": "3"}, None)
    assert spec is None
    assert [str(issue) for issue in issues] == [
        "connector 'fb': Limit: unknown parameter of the MLFeedback connector"]


@pytest.mark.parametrize(("lis_keys", "where", "parameter", "text"), [
    ({"storage": {"s3_endpoint_url": "ftp://host"}}, "feedback", "storage", "'ftp://host'"),
    ({"storage": {"s3_endpoint_url": "file://relative/path"}}, "feedback", "storage",
     "file:///absolute/path"),
    ({"storage": {"access_key_id": "only-the-id"}}, "feedback", "storage", "both or neither"),
    ({"storage": {"bucket": "x"}}, "feedback.storage", "bucket", "unknown key"),
    ({"mqtt": {"tls": {"cert_file": "/c.pem"}}}, "feedback.mqtt", "tls", "both or neither"),
    ({"spool": {"max_bytes": 0}}, "feedback.spool", "max_bytes", "0"),
])
def test_bad_lis_keys_are_reported(lis_keys: dict[str, Any], where: str, parameter: str,
                                   text: str) -> None:
    spec, issues = parse_configs({"cfg": GOOD}, lis_keys=lis_keys)
    assert spec is None
    assert [(issue.where, issue.parameter) for issue in issues] == [(where, parameter)]
    assert text in issues[0].problem


def test_a_local_store_refuses_a_prefix_that_leaves_the_bucket() -> None:
    spec, issues = parse_configs({"cfg": {**GOOD, "s3-prefix": "../../etc"}},
                                 lis_keys={"storage": {"s3_endpoint_url": "file:///srv/fb"}})
    assert spec is None
    assert [(issue.where, issue.parameter) for issue in issues] == [
        ("connector 'fb' feedback config 'cfg'", "s3-prefix")]
