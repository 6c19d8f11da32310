"""Configuration: what Greengrass users already have loads unchanged; every mistake is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import demo_config_path, load_config
from vocabulary.errors import ConfigError, ConfigIssue, ServiceNotFound
from vocabulary.limits import DEFAULT_TIMEOUT_S
from vocabulary.specs import (
    AutoscalingSpec,
    LisConfig,
    ModelStoreSpec,
    PreprocessingOverrides,
    ServiceSpec,
)

# The `--initial-version` bodies of the seed pages' CLI examples, verbatim.
SEED_IC_CPU = """{
    "Connectors": [
        {
            "Id": "MyImageClassificationConnector",
            "ConnectorArn": "arn:aws:greengrass:region::/connectors/ImageClassificationARMv7/versions/1",
            "Parameters": {
                "MLModelDestinationPath": "/path-to-model",
                "MLModelResourceId": "my-ml-resource",
                "MLModelSageMakerJobArn": "arn:aws:sagemaker:us-west-2:123456789012:training-job:MyImageClassifier",
                "LocalInferenceServiceName": "imageClassification",
                "LocalInferenceServiceTimeoutSeconds": "10",
                "LocalInferenceServiceMemoryLimitKB": "500000"
            }
        }
    ]
}"""
SEED_IC_GPU = """{
    "Connectors": [
        {
            "Id": "MyImageClassificationConnector",
            "ConnectorArn": "arn:aws:greengrass:region::/connectors/ImageClassificationAarch64JTX2/versions/1",
            "Parameters": {
                "MLModelDestinationPath": "/path-to-model",
                "MLModelResourceId": "my-ml-resource",
                "MLModelSageMakerJobArn": "arn:aws:sagemaker:us-west-2:123456789012:training-job:MyImageClassifier",
                "LocalInferenceServiceName": "imageClassification",
                "LocalInferenceServiceTimeoutSeconds": "10",
                "LocalInferenceServiceMemoryLimitKB": "500000",
                "GPUAcceleration": "GPU"
            }
        }
    ]
}"""
SEED_OD = """{
    "Connectors": [
        {
            "Id": "MyObjectDetectionConnector",
            "ConnectorArn": "arn:aws:greengrass:region::/connectors/ObjectDetectionARMv7/versions/1",
            "Parameters": {
                "MLModelDestinationPath": "/path-to-model",
                "MLModelResourceId": "my-ml-resource",
                "LocalInferenceServiceName": "objectDetection",
                "LocalInferenceServiceTimeoutSeconds": "10",
                "LocalInferenceServiceMemoryLimitKB": "500000",
                "MLFeedbackConnectorConfigId" : "object-detector-random-sampling"
            }
        }
    ]
}"""
SEEDS = {"ic-cpu": SEED_IC_CPU, "ic-gpu": SEED_IC_GPU, "od": SEED_OD}

IC_X86_V2 = "arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2"
OD_X86 = "arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionx86-64/versions/1"
OD_JTX2 = "arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionAarch64JTX2/versions/1"
FEEDBACK_ARN = "arn:aws:greengrass:us-west-2::/connectors/MLFeedback/versions/1"


def _write(folder: Path, name: str, content: str | dict) -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def _seed(text: str, model: Path, *, full: bool = False) -> dict:
    body = json.loads(text.replace("/path-to-model", str(model)))
    return {"Name": "MyGreengrassConnectors", "InitialVersion": body} if full else body


def _connector(connector_id: str, arn: str, **parameters: object) -> dict:
    return {"Id": connector_id, "ConnectorArn": arn, "Parameters": parameters}


def _od_parameters(**changes: object) -> dict:
    parameters = {
        "MLModelDestinationPath": "/models/ssd", "MLModelResourceId": "ssd-model",
        "LocalInferenceServiceName": "detector", "LocalInferenceServiceTimeoutSeconds": "10",
        "LocalInferenceServiceMemoryLimitKB": "500000",
    }
    parameters.update(changes)
    return {k: v for k, v in parameters.items() if v is not None}


def _ic_parameters(**changes: object) -> dict:
    parameters = _od_parameters(LocalInferenceServiceName="classifier", MLModelResourceId="ic-model",
                                MLModelDestinationPath="/models/ic")
    parameters["MLModelSageMakerJobArn"] = (
        "arn:aws:sagemaker:us-west-2:123456789012:training-job/MyImageClassifier")
    parameters.update(changes)
    return {k: v for k, v in parameters.items() if v is not None}


def _problems(paths: list[Path]) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(paths)
    return caught.value.issues


def _only_problem(paths: list[Path]) -> ConfigIssue:
    issues = _problems(paths)
    assert len(issues) == 1, issues
    return issues[0]


# --- accepted as users have them ---------------------------------------------------


@pytest.mark.parametrize("full", [False, True], ids=["initial-version-body", "full-definition"])
@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_the_seed_cli_examples_load_unchanged(tmp_path: Path, seed: str, full: bool) -> None:
    model = tmp_path / "model"
    path = _write(tmp_path, "connectors.json", _seed(SEEDS[seed], model, full=full))

    config = load_config([path])

    (service,) = config.services
    assert service.name == ("objectDetection" if seed == "od" else "imageClassification")
    assert service.algorithm == ("object-detection" if seed == "od" else "image-classification")
    assert service.platform == ("Aarch64JTX2" if seed == "ic-gpu" else "ARMv7")
    assert service.platform_resource == f"connector-platform:{service.platform}"
    assert service.connector_id == json.loads(SEEDS[seed])["Connectors"][0]["Id"]
    assert service.model_source == str(model)
    assert service.model_destination == model
    assert service.model_resource_id == "my-ml-resource"
    assert (service.timeout_s, service.memory_limit_kb) == (10.0, 500000)
    assert (service.gpu, service.num_gpus) == ((True, 1.0) if seed == "ic-gpu" else (False, 0.0))
    assert config.sources == (str(path),)


def test_a_feedback_config_id_is_recorded_when_no_feedback_connector_is_declared(
        tmp_path: Path) -> None:
    path = _write(tmp_path, "od.json", _seed(SEED_OD, tmp_path))
    (service,) = load_config([path]).services
    assert service.feedback_config_id == "object-detector-random-sampling"


def test_the_get_definition_version_output_loads_too(tmp_path: Path) -> None:
    printed = {"Arn": "arn:aws:greengrass:us-west-2:1:/greengrass/definition/connectors/x",
               "CreationTimestamp": "2020-01-01T00:00:00Z", "Id": "x", "Version": "y",
               "Definition": _seed(SEED_OD, tmp_path)}
    (service,) = load_config([_write(tmp_path, "printed.json", printed)]).services
    assert service.name == "objectDetection"


def test_connectors_with_an_s3_resource_definition_take_the_model_from_s3(tmp_path: Path) -> None:
    connectors = _write(tmp_path, "connectors.json", {"Connectors": [
        _connector("Detector", OD_X86, **_od_parameters())]})
    resources = _write(tmp_path, "resources.json", {"Name": "MyResources", "InitialVersion": {
        "Resources": [{"Id": "ssd-model", "Name": "SSD", "ResourceDataContainer": {
            "S3MachineLearningModelResourceData": {
                "DestinationPath": "/models/ssd", "S3Uri": "s3://models/ssd.tar.gz"}}}]}})

    (service,) = load_config([connectors, resources]).services

    assert service.model_source == "s3://models/ssd.tar.gz"
    assert service.model_destination == Path("/models/ssd")


def test_a_sagemaker_resource_leaves_the_model_at_its_destination_path(tmp_path: Path) -> None:
    connectors = _write(tmp_path, "c.json", {"Connectors": [
        _connector("Classifier", IC_X86_V2, **_ic_parameters())]})
    resources = _write(tmp_path, "r.json", {"Resources": [{
        "Id": "ic-model", "Name": "IC", "ResourceDataContainer": {
            "SageMakerMachineLearningModelResourceData": {
                "DestinationPath": "/models/ic",
                # the same job, written as the page's CLI example writes it
                "SageMakerJobArn": "arn:aws:sagemaker:us-west-2:123456789012:training-job:MyImageClassifier",
                "OwnerSetting": {"GroupOwner": "ggc", "GroupPermission": "ro"}}}}]})

    (service,) = load_config([connectors, resources]).services

    assert service.model_source == "/models/ic"


SERVICES_YAML = """
http: {host: 0.0.0.0, port: 8080, token_env: LIS_TOKEN}
model_store:
  endpoint_url: http://127.0.0.1:9000
  allow_insecure_store: true
  region: us-east-1
  access_key_id_env: STORE_KEY
  secret_access_key_env: STORE_SECRET
services:
  - LocalInferenceServiceName: classifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    LocalInferenceServiceTimeoutSeconds: 5
    LocalInferenceServiceMemoryLimitKB: "700000"
    MLFeedbackConnectorConfigId:
    model: models/classifier
    preprocessing: {width: 128, height: 128, color: BGR, mean: [1, 2, 3]}
    autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 3}
    num_cpus: 2
    top_k: 3
    placement: {camera-node: 1}
    max_request_bytes: 2000000
    max_pixels: 1000000
    max_queued_requests: 8
  - LocalInferenceServiceName: jetson-detector
    algorithm: object-detection
    platform: Aarch64JTX2
    GPUAcceleration: GPU
    model: s3://models/ssd.tar.gz
    MLModelDestinationPath: /ml/ssd
    num_gpus: 0.5
    allow_cpu_fallback: true
    num_replicas: 2
    threads: 3
    score_threshold: 0.25
"""


def test_a_services_file_sets_every_lis_key(tmp_path: Path) -> None:
    config = load_config([_write(tmp_path, "lis.yaml", SERVICES_YAML)])

    classifier, detector = config.services
    assert classifier.connector_id == "classifier"  # no Id: named after the service
    assert classifier.model_source == str(tmp_path / "models" / "classifier")
    assert classifier.model_destination is None
    assert (classifier.timeout_s, classifier.memory_limit_kb) == (5.0, 700000)
    assert classifier.feedback_config_id is None
    assert classifier.preprocessing == {"width": 128, "height": 128, "color": "BGR",
                                        "mean": (1.0, 2.0, 3.0)}
    assert classifier.autoscaling == AutoscalingSpec(min_replicas=1, max_replicas=4,
                                                     target_ongoing_requests=3)
    assert classifier.num_replicas is None
    assert (classifier.num_cpus, classifier.runtime_threads) == (2.0, 2)
    assert classifier.placement == {"camera-node": 1.0}
    assert (classifier.top_k, classifier.max_request_bytes, classifier.max_pixels,
            classifier.max_queued_requests) == (3, 2000000, 1000000, 8)
    assert detector.connector_arn.endswith("/connectors/ObjectDetectionAarch64JTX2/versions/1")
    assert (detector.algorithm, detector.platform) == ("object-detection", "Aarch64JTX2")
    assert (detector.gpu, detector.num_gpus, detector.allow_cpu_fallback) == (True, 0.5, True)
    assert detector.model_source == "s3://models/ssd.tar.gz"
    assert detector.model_destination == Path("/ml/ssd")
    assert (detector.num_replicas, detector.runtime_threads) == (2, 3)
    assert detector.timeout_s == DEFAULT_TIMEOUT_S and detector.memory_limit_kb is None
    assert detector.score_threshold == 0.25
    assert (config.http.host, config.http.port, config.http.token_env) == ("0.0.0.0", 8080, "LIS_TOKEN")
    assert config.model_store.endpoint_url == "http://127.0.0.1:9000"
    assert config.model_store.secret_access_key_env == "STORE_SECRET"


def test_a_services_file_may_be_json(tmp_path: Path) -> None:
    import yaml

    path = _write(tmp_path, "lis.conf", json.dumps(yaml.safe_load(SERVICES_YAML)))
    assert [s.name for s in load_config([path]).services] == ["classifier", "jetson-detector"]


def test_one_services_file_can_hold_connectors_resources_and_lis_keys(tmp_path: Path) -> None:
    text = f"""
connectors:
  - Id: Detector
    ConnectorArn: {OD_X86}
    Parameters: {json.dumps(_od_parameters())}
resources:
  - Id: ssd-model
    Name: SSD
    ResourceDataContainer:
      S3MachineLearningModelResourceData: {{DestinationPath: /models/ssd, S3Uri: "s3://m/ssd.zip"}}
services:
  - connector: Detector
    num_replicas: 3
    score_threshold: 0.5
"""
    (service,) = load_config([_write(tmp_path, "all.yaml", text)]).services
    assert (service.connector_id, service.name) == ("Detector", "detector")
    assert service.model_source == "s3://m/ssd.zip"
    assert (service.num_replicas, service.score_threshold) == (3, 0.5)


def test_lis_keys_can_be_added_to_an_unchanged_connector_definition(tmp_path: Path) -> None:
    connectors = _write(tmp_path, "connectors.json", _seed(SEED_IC_CPU, Path("/not/here"), full=True))
    (tmp_path / "conf").mkdir()
    overlay = _write(tmp_path / "conf", "lis.yaml",
                     "services:\n  - connector: MyImageClassificationConnector\n"
                     "    model: ../models/classifier.tar.gz\n    num_cpus: 0.5\n")

    (service,) = load_config([connectors, overlay]).services

    # lis's model key wins over MLModelDestinationPath, relative to the file it is written in
    assert service.model_source == str(tmp_path / "models" / "classifier.tar.gz")
    assert service.model_destination == Path("/not/here")
    assert (service.num_cpus, service.runtime_threads) == (0.5, 1)


def test_relative_model_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    (tmp_path / "defs").mkdir()
    path = _write(tmp_path / "defs", "c.json", {"Connectors": [_connector(
        "Detector", OD_X86, **_od_parameters(MLModelDestinationPath="../models/ssd"))]})
    (service,) = load_config([path]).services
    assert service.model_source == str(tmp_path / "models" / "ssd")


@pytest.mark.parametrize("model", ["file:///srv/models/ssd.tar.gz", "/srv/models/ssd"])
def test_file_uris_and_absolute_paths_are_kept(tmp_path: Path, model: str) -> None:
    path = _write(tmp_path, "lis.yaml", f"services:\n  - LocalInferenceServiceName: d1\n"
                                        f"    algorithm: object-detection\n    platform: x86-64\n"
                                        f"    model: {model}\n")
    assert load_config([path]).services[0].model_source == model


def test_the_demo_services_are_the_seed_examples_names() -> None:
    config = load_config([demo_config_path()])
    assert demo_config_path().name == "demo.yaml"
    by_name = {s.name: s for s in config.services}
    assert sorted(by_name) == ["imageClassification", "objectDetection", "objectDetectionYolo"]
    assert by_name["imageClassification"].algorithm == "image-classification"
    assert by_name["objectDetection"].algorithm == "object-detection"
    models = demo_config_path().resolve().parents[1] / "build" / "models"
    assert {s.model_source for s in config.services} == {
        str(models / "shapes-classifier"), str(models / "shapes-ssd"), str(models / "shapes-yolo3")}
    for service in config.services:
        assert service.platform == "x86-64"
        assert (service.timeout_s, service.memory_limit_kb, service.num_replicas) == (10, 500000, 1)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8000)


# --- each documented parameter rule, one at a time ------------------------------------

BAD_PARAMETERS = [
    # (connector ARN, parameter, bad value or None for "left out", words in the problem)
    (OD_X86, "LocalInferenceServiceName", "a", "does not match"),
    (OD_X86, "LocalInferenceServiceName", "-detector", "does not match"),
    (OD_X86, "LocalInferenceServiceName", "d" * 64, "does not match"),
    (OD_X86, "LocalInferenceServiceName", "my_detector", "does not match"),
    (OD_X86, "LocalInferenceServiceTimeoutSeconds", "0", "at least 1"),
    (OD_X86, "LocalInferenceServiceTimeoutSeconds", "1.5", "whole number"),
    (OD_X86, "LocalInferenceServiceTimeoutSeconds", "ten", "whole number"),
    (OD_X86, "LocalInferenceServiceMemoryLimitKB", "0", "at least 1"),
    (OD_X86, "LocalInferenceServiceMemoryLimitKB", "-500", "whole number"),
    (OD_X86, "LocalInferenceServiceMemoryLimitKB", 500000, "not a string"),
    (OD_X86, "MLModelDestinationPath", "", "non-empty"),
    (OD_X86, "MLModelResourceId", "my resource", "does not match"),
    (OD_X86, "MLModelResourceId", "model/1", "does not match"),
    (OD_X86, "MLFeedbackConnectorConfigId", "-sampling", "does not match"),
    (OD_X86, "GPUAcceleration", "CPU", "Aarch64JTX2 connectors only"),
    (OD_JTX2, "GPUAcceleration", "gpu", "CPU or GPU"),
    (OD_JTX2, "GPUAcceleration", None, "missing"),
    (IC_X86_V2, "MLModelSageMakerJobArn", "arn:aws:sagemaker:us-west-2:123456789012:model/x",
     "training-job"),
    (IC_X86_V2, "MLModelSageMakerJobArn", "MyImageClassifier", "training-job"),
    (IC_X86_V2, "MLModelSageMakerJobArn", None, "missing"),
    (IC_X86_V2.replace("versions/2", "versions/1"), "MLFeedbackConnectorConfigId", "sampling",
     "added it in version 2"),
    (OD_X86, "MLModelSageMakerJobArn",
     "arn:aws:sagemaker:us-west-2:123456789012:training-job/x", "image classification"),
    (OD_X86, "ModelPath", "/models", "unknown parameter"),
] + [
    (arn, name, None, "missing")
    for arn in (OD_X86, IC_X86_V2)
    for name in ("MLModelDestinationPath", "MLModelResourceId", "LocalInferenceServiceName",
                 "LocalInferenceServiceTimeoutSeconds", "LocalInferenceServiceMemoryLimitKB")
]


@pytest.mark.parametrize(("arn", "parameter", "value", "words"), BAD_PARAMETERS,
                         ids=[f"{a.split('/')[2]}-{p}-{v!r}" for a, p, v, _ in BAD_PARAMETERS])
def test_each_invalid_parameter_is_named_with_its_value(tmp_path: Path, arn: str, parameter: str,
                                                        value: object, words: str) -> None:
    base = _ic_parameters() if "ImageClassification" in arn else _od_parameters()
    if "JTX2" in arn:
        base["GPUAcceleration"] = "CPU"
    base.pop(parameter, None)
    if value is not None:
        base[parameter] = value
    path = _write(tmp_path, "c.json", {"Connectors": [_connector("Connector-1", arn, **base)]})

    issue = _only_problem([path])

    assert (issue.where, issue.parameter) == ("connector 'Connector-1'", parameter)
    assert words in issue.problem
    if value is not None:
        assert repr(value) in issue.problem


@pytest.mark.parametrize("value", ["", "object-detector-random-sampling"])
def test_an_empty_or_valid_feedback_config_id_is_accepted(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, "c.json", {"Connectors": [_connector(
        "D", OD_X86, **_od_parameters(MLFeedbackConnectorConfigId=value))]})
    assert load_config([path]).services[0].feedback_config_id == (value or None)


def test_gpu_acceleration_cpu_on_a_jetson_asks_for_no_gpu(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", {"Connectors": [_connector(
        "D", OD_JTX2, **_od_parameters(GPUAcceleration="CPU"))]})
    (service,) = load_config([path]).services
    assert (service.gpu, service.num_gpus) == (False, 0.0)


BAD_ARNS = [
    ("arn:aws:greengrass:region::/connectors/ImageClassificationx86/versions/1", "does not run"),
    ("arn:aws:greengrass:region::/connectors/ObjectDetectionx86-64/versions/2", "no version '2'"),
    ("arn:aws:greengrass:region::/connectors/ImageClassificationARMv7/versions/3", "no version '3'"),
    ("arn:aws:greengrass:region::/connectors/MLFeedback/versions/2", "no version '2'"),
    ("arn:aws:greengrass:Oregon::/connectors/ObjectDetectionx86-64/versions/1", "region"),
    ("arn:aws:iot:us-west-2::/connectors/ObjectDetectionx86-64/versions/1", "not a connector ARN"),
    ("ObjectDetectionx86-64", "not a connector ARN"),
]


@pytest.mark.parametrize(("arn", "words"), BAD_ARNS)
def test_unknown_connector_arns_are_rejected(tmp_path: Path, arn: str, words: str) -> None:
    path = _write(tmp_path, "c.json", {"Connectors": [_connector("C", arn, **_od_parameters())]})
    issue = _only_problem([path])
    assert (issue.where, issue.parameter) == ("connector 'C'", "ConnectorArn")
    assert words in issue.problem and repr(arn) in issue.problem


@pytest.mark.parametrize("region", ["us-west-2", "cn-north-1", "us-gov-west-1", "region"])
def test_real_regions_and_the_pages_placeholder_are_accepted(tmp_path: Path, region: str) -> None:
    arn = f"arn:aws:greengrass:{region}::/connectors/ObjectDetectionx86-64/versions/1"
    path = _write(tmp_path, "c.json", {"Connectors": [_connector("C", arn, **_od_parameters())]})
    assert load_config([path]).services[0].connector_arn == arn


# --- all problems at once, and the cross-checks ----------------------------------------


def test_every_problem_in_every_file_is_reported_at_once(tmp_path: Path) -> None:
    connectors = _write(tmp_path, "c.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters(LocalInferenceServiceTimeoutSeconds="0")),
        _connector("B", OD_X86.replace("x86-64", "x86"), **_od_parameters(LocalInferenceServiceName="b1")),
        _connector("C", IC_X86_V2, **_ic_parameters(LocalInferenceServiceName="x")),
    ]})
    services = _write(tmp_path, "lis.yaml", "services:\n"
                      "  - {LocalInferenceServiceName: e1, algorithm: object-detection,"
                      " platform: x86-64, model: m, num_replica: 2}\n"
                      "  - {LocalInferenceServiceName: e2, algorithm: image-classification,"
                      " platform: x86-64, model: m, score_threshold: 0.5}\n")

    with pytest.raises(ConfigError) as caught:
        load_config([connectors, services])

    found = {(i.where, i.parameter) for i in caught.value.issues}
    assert found == {
        ("connector 'A'", "LocalInferenceServiceTimeoutSeconds"),
        ("connector 'B'", "ConnectorArn"),
        ("connector 'C'", "LocalInferenceServiceName"),
        (f"{services}: services[0]", "num_replica"),
        (f"{services}: services[1]", "score_threshold"),
    }
    message = str(caught.value)
    assert "5 problem(s)" in message and "'0'" in message and "did you mean 'num_replicas'" in message


def test_two_services_with_one_name_are_rejected(tmp_path: Path) -> None:
    connectors = _write(tmp_path, "c.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters()),
        _connector("B", IC_X86_V2, **_ic_parameters(LocalInferenceServiceName="detector"))]})
    services = _write(tmp_path, "lis.yaml", "services:\n  - {LocalInferenceServiceName: detector,"
                      " algorithm: object-detection, platform: x86-64, model: m}\n")

    issues = _problems([connectors, services])

    assert [(i.where, i.parameter) for i in issues] == [
        ("connector 'B'", "LocalInferenceServiceName"),
        (f"{services}: services[0]", "LocalInferenceServiceName")]
    assert all("'detector'" in i.problem and "connector 'A'" in i.problem for i in issues)


def test_two_connectors_with_one_id_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters()),
        _connector("A", OD_X86, **_od_parameters(LocalInferenceServiceName="other"))]})
    issue = _only_problem([path])
    assert (issue.parameter, "'A'" in issue.problem) == ("Id", True)


def test_a_resource_id_that_names_no_resource_is_rejected(tmp_path: Path) -> None:
    connectors = _write(tmp_path, "c.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters(MLModelResourceId="typo-model"))]})
    resources = _write(tmp_path, "r.json", {"Resources": [{
        "Id": "ssd-model", "Name": "SSD", "ResourceDataContainer": {
            "S3MachineLearningModelResourceData": {"DestinationPath": "/models/ssd",
                                                   "S3Uri": "s3://m/ssd.tar.gz"}}}]})

    issue = _only_problem([connectors, resources])

    assert (issue.where, issue.parameter) == ("connector 'A'", "MLModelResourceId")
    assert "'typo-model' names no resource" in issue.problem and "ssd-model" in issue.problem


def _resource(container: dict, resource_id: str = "ssd-model") -> dict:
    return {"Resources": [{"Id": resource_id, "Name": "model", "ResourceDataContainer": container}]}


BAD_RESOURCES = [
    (_resource({"S3MachineLearningModelResourceData": {
        "DestinationPath": "/elsewhere", "S3Uri": "s3://m/k"}}),
     ("connector 'A'", "MLModelDestinationPath"), "'/elsewhere'"),
    (_resource({"SageMakerMachineLearningModelResourceData": {
        "DestinationPath": "/models/ssd",
        "SageMakerJobArn": "arn:aws:sagemaker:us-west-2:1:training-job/job1"}}),
     ("connector 'A'", "MLModelResourceId"), "Neo-compiled model from S3"),
    (_resource({"LocalVolumeResourceData": {"SourcePath": "/a", "DestinationPath": "/b"}}),
     ("connector 'A'", "MLModelResourceId"), "not an ML model resource"),
    (_resource({"S3MachineLearningModelResourceData": {
        "DestinationPath": "/models/ssd", "S3Uri": "https://m/k"}}),
     ("resource 'ssd-model'", "S3MachineLearningModelResourceData.S3Uri"), "'https://m/k'"),
    (_resource({"S3MachineLearningModelResourceData": {
        "DestinationPath": "models/ssd", "S3Uri": "s3://m/k"}}),
     ("resource 'ssd-model'", "S3MachineLearningModelResourceData.DestinationPath"), "absolute"),
    (_resource({"S3MachineLearningModelResourceData": {
        "DestinationPath": "/models/ssd", "S3Uri": "s3://m/k", "Region": "x"}}),
     ("resource 'ssd-model'", "S3MachineLearningModelResourceData.Region"), "unknown key"),
    (_resource({"S3ModelResourceData": {}}),
     ("resource 'ssd-model'", "ResourceDataContainer"), "'S3ModelResourceData'"),
]


@pytest.mark.parametrize(("definition", "location", "words"), BAD_RESOURCES)
def test_resource_problems_are_named(tmp_path: Path, definition: dict,
                                     location: tuple[str, str], words: str) -> None:
    connectors = _write(tmp_path, "c.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters())]})
    issue = _only_problem([connectors, _write(tmp_path, "r.json", definition)])
    assert (issue.where, issue.parameter) == location and words in issue.problem


def test_a_resource_id_is_only_recorded_when_no_resources_are_given(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", {"Connectors": [_connector("A", OD_X86, **_od_parameters())]})
    (service,) = load_config([path]).services
    assert (service.model_resource_id, service.model_source) == ("ssd-model", "/models/ssd")


UNKNOWN_KEYS = [
    ({"Connectors": [{**_connector("A", OD_X86, **_od_parameters()), "Paramaters": {}}]},
     ("connector 'A'", "Paramaters"), "did you mean 'Parameters'"),
    ({"Name": "x", "InitialVersion": {"Connectors": []}, "Descripton": "x"},
     (None, "Descripton"), "unknown key"),
    ({"Connectors": [], "Resorces": []}, (None, "Resorces"), "did you mean 'Resources'"),
    ("servics: []\n", (None, "servics"), "did you mean 'services'"),
    ("services:\n  - {LocalInferenceServiceName: d1, algorithm: object-detection,"
     " platform: x86-64, model: m, autoscaling: {max_replicas: 2, min_replica: 1}}\n",
     ("services[0]", "autoscaling.min_replica"), "did you mean 'min_replicas'"),
    ("services:\n  - {LocalInferenceServiceName: d1, algorithm: object-detection,"
     " platform: x86-64, model: m, preprocessing: {colour: BGR}}\n",
     ("services[0]", "preprocessing.colour"), "did you mean 'color'"),
    ("http: {hots: 0.0.0.0}\n", (None, "http.hots"), "did you mean 'host'"),
    ("services:\n  - {LocalInferenceServiceName: d1, algorithm: object-detection,"
     " platform: x86-64, model: m, Timeout: '5'}\n",
     ("services[0]", "Timeout"), "unknown parameter of ObjectDetectionx86-64"),
]


@pytest.mark.parametrize(("content", "location", "words"), UNKNOWN_KEYS)
def test_unknown_keys_are_rejected(tmp_path: Path, content: str | dict,
                                   location: tuple[str | None, str], words: str) -> None:
    path = _write(tmp_path, "config.yaml" if isinstance(content, str) else "c.json", content)
    issue = _only_problem([path])
    where = location[0] if location[0] and location[0].startswith("connector") else (
        f"{path}: {location[0]}" if location[0] else str(path))
    assert (issue.where, issue.parameter) == (where, location[1])
    assert words in issue.problem


def _entry(**keys: object) -> str:
    entry = {"LocalInferenceServiceName": "d1", "algorithm": "object-detection",
             "platform": "x86-64", "model": "m", **keys}
    return json.dumps({"services": [entry]})


BAD_LIS_KEYS = [
    (_entry(num_replicas=2, autoscaling={"max_replicas": 3}), "num_replicas", "not both"),
    (_entry(autoscaling={"min_replicas": 3, "max_replicas": 2}), "autoscaling", "above max_replicas"),
    (_entry(autoscaling={"max_replicas": 2, "upscale_delay_s": -1}), "autoscaling.upscale_delay_s",
     "got -1"),
    (_entry(autoscaling={"max_replicas": 2, "look_back_period_s": 0}),
     "autoscaling.look_back_period_s", "got 0"),
    (_entry(num_replicas=0), "num_replicas", "got 0"),
    (_entry(num_gpus=1), "num_gpus", "GPUAcceleration is not GPU"),
    (_entry(platform="Aarch64JTX2", GPUAcceleration="GPU", num_gpus=0), "num_gpus", "is 0"),
    (_entry(algorithm="image-classification", score_threshold=0.5), "score_threshold",
     "object-detection services only"),
    (_entry(score_threshold=1.5), "score_threshold", "got 1.5"),
    (_entry(top_k=0), "top_k", "got 0"),
    (_entry(num_cpus=-1), "num_cpus", "got -1"),
    (_entry(threads="many"), "threads", "got 'many'"),
    (_entry(placement={"CPU": 2}), "placement.CPU", "num_cpus"),
    (_entry(placement={"connector-platform:ARMv7": 1}), "placement.connector-platform:ARMv7",
     "connector's platform"),
    (_entry(max_request_bytes=0), "max_request_bytes", "got 0"),
    (_entry(preprocessing={"width": 0}), "preprocessing.width", "got 0"),
    (_entry(preprocessing={"color": "RGBA"}), "preprocessing.color", "got 'RGBA'"),
    (_entry(preprocessing={"mean": [1, 2]}), "preprocessing.mean.2", "missing"),
    (_entry(preprocessing={"std": [1, 1, 0]}), "preprocessing.std.2", "got 0"),
    (_entry(model="gs://bucket/model"), "model", "unsupported scheme 'gs'"),
    (_entry(model="s3://bucket-only"), "model", "s3://<bucket>/<key>"),
    (_entry(model="file://host/models/x"), "model", "file:///<absolute path>"),
    (_entry(model=None, MLModelDestinationPath=None), "MLModelDestinationPath",
     "give MLModelDestinationPath or lis's model key"),
    (_entry(algorithm="image-recognition"), "algorithm", "'image-recognition'"),
    (_entry(platform="x86_64"), "platform", "'x86_64'"),
    (_entry(ConnectorArn=OD_X86), "ConnectorArn", "not both"),
]


@pytest.mark.parametrize(("content", "parameter", "words"), BAD_LIS_KEYS,
                         ids=[p for _, p, _ in BAD_LIS_KEYS])
def test_each_invalid_lis_key_is_named(tmp_path: Path, content: str, parameter: str,
                                       words: str) -> None:
    path = _write(tmp_path, "lis.json", content.replace(', "model": null', "").replace(
        ', "MLModelDestinationPath": null', ""))
    issue = _only_problem([path])
    assert (issue.where, issue.parameter) == (f"{path}: services[0]", parameter)
    assert words in issue.problem


@pytest.mark.parametrize(("section", "parameter", "words"), [
    ("http: {port: 70000}", "http.port", "got 70000"),
    ("http: {token_env: 'my token'}", "http.token_env", "got 'my token'"),
    ("model_store: {endpoint_url: 'minio:9000'}", "model_store.endpoint_url", "got 'minio:9000'"),
    ("model_store: {access_key_id: AKIA}", "model_store", "both"),
    ("model_store: {access_key_id: a, secret_access_key: b, access_key_id_env: A,"
     " secret_access_key_env: B}", "model_store", "not both"),
])
def test_invalid_top_level_settings_are_named(tmp_path: Path, section: str, parameter: str,
                                              words: str) -> None:
    path = _write(tmp_path, "lis.yaml", section + "\n")
    issue = _only_problem([path])
    assert (issue.where, issue.parameter) == (str(path), parameter)
    assert words in issue.problem


def test_a_setting_given_in_two_files_is_rejected(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yaml", "http: {port: 8001}\n")
    second = _write(tmp_path, "b.yaml", "http: {port: 8002}\n")
    issue = _only_problem([first, second])
    assert (issue.where, issue.parameter) == (str(second), "http")
    assert str(first) in issue.problem


@pytest.mark.parametrize(("content", "words"), [
    ('{"Connectors": [', "invalid JSON at line 1"),
    ("services: [\n", "invalid YAML"),
    ("", "empty"),
    ("- a\n- b\n", "mapping at the top level"),
])
def test_unreadable_files_are_named(tmp_path: Path, content: str, words: str) -> None:
    path = _write(tmp_path, "broken", content)
    issue = _only_problem([path])
    assert issue.where == str(path) and words in issue.problem


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    issue = _only_problem([tmp_path / "nope.json"])
    assert issue.where == str(tmp_path / "nope.json") and "cannot read" in issue.problem


# --- the ML Feedback connector ---------------------------------------------------------


def _feedback_connector(configs: dict) -> dict:
    return _connector("Feedback", FEEDBACK_ARN,
                      FeedbackConfigurationMap=json.dumps(configs), RequestLimit="10")


RANDOM_SAMPLING = {"s3-bucket-name": "samples", "content-type": "image/jpeg",
                   "sampling-strategy": {"strategy-name": "RANDOM_SAMPLING", "rate": 0.5}}


def test_a_feedback_connector_is_parsed_and_its_config_ids_checked(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters(MLFeedbackConnectorConfigId="random")),
        _feedback_connector({"random": RANDOM_SAMPLING})]})
    config = load_config([good])
    assert sorted(config.feedback.configs) == ["random"]
    assert config.services[0].feedback_config_id == "random"

    bad = _write(tmp_path, "bad.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters(MLFeedbackConnectorConfigId="entropy")),
        _feedback_connector({"random": RANDOM_SAMPLING})]})
    issue = _only_problem([bad])
    assert (issue.where, issue.parameter) == ("connector 'A'", "MLFeedbackConnectorConfigId")
    assert "'entropy' names no configuration" in issue.problem and "random" in issue.problem


def test_feedback_settings_reach_the_feedback_parser(tmp_path: Path) -> None:
    connector = _feedback_connector({"random": RANDOM_SAMPLING})
    text = f"connectors:\n  - {json.dumps(connector)}\nfeedback: {{mqtt: {{port: 1884}}}}\n"
    config = load_config([_write(tmp_path, "lis.yaml", text)])
    assert config.services == () and config.feedback.mqtt.port == 1884


def test_feedback_problems_are_reported_with_the_others(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", {"Connectors": [
        _connector("A", OD_X86, **_od_parameters(LocalInferenceServiceTimeoutSeconds="0")),
        _feedback_connector({"random": {**RANDOM_SAMPLING, "s3-bucket-name": "No_Such"}})]})
    issues = _problems([path])
    assert {i.parameter for i in issues} >= {"LocalInferenceServiceTimeoutSeconds"}
    assert any("No_Such" in i.problem for i in issues)


def test_feedback_settings_without_a_feedback_connector_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "lis.yaml", "feedback: {mqtt: {port: 1883}}\n")
    issue = _only_problem([path])
    assert issue.parameter == "feedback" and "no MLFeedback connector" in issue.problem


def test_a_second_feedback_connector_is_rejected(tmp_path: Path) -> None:
    second = {**_feedback_connector({"random": RANDOM_SAMPLING}), "Id": "Feedback2"}
    path = _write(tmp_path, "c.json", {"Connectors": [
        _feedback_connector({"random": RANDOM_SAMPLING}), second]})
    issue = _only_problem([path])
    assert issue.where == "connector 'Feedback2'" and "second MLFeedback" in issue.problem


# --- the typed specs as a Python API ---------------------------------------------------


def _spec(**fields: object) -> ServiceSpec:
    return ServiceSpec(**{"name": "svc", "algorithm": "object-detection", "platform": "x86-64",
                          "connector_id": "svc", "connector_arn": OD_X86, "model_source": "/m",
                          **fields})


def test_service_spec_defaults_are_the_named_constants() -> None:
    spec = _spec()
    assert (spec.timeout_s, spec.max_pixels, spec.max_request_bytes, spec.max_queued_requests) == (
        10.0, 50_000_000, 10 * 1024 * 1024, 64)
    assert (spec.num_cpus, spec.runtime_threads, spec.num_gpus, spec.gpu) == (1.0, 1, 0.0, False)
    assert (_spec(num_cpus=4).runtime_threads, _spec(num_cpus=4, threads=2).runtime_threads) == (4, 2)
    assert (_spec(gpu=True).num_gpus, _spec(gpu=True, num_gpus=0.25).num_gpus) == (1.0, 0.25)
    assert _spec(feedback_config_id="").feedback_config_id is None


def test_specs_are_frozen_and_reject_unknown_fields() -> None:
    spec = _spec()
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        _spec(replicas=2)
    with pytest.raises(ValidationError, match="score_threshold"):
        _spec(algorithm="image-classification", score_threshold=0.5)


def test_preprocessing_overrides_name_exactly_the_preprocessing_fields() -> None:
    from deployments.imaging import Preprocessing

    assert set(PreprocessingOverrides.__annotations__) == set(Preprocessing.__dataclass_fields__) - {"extra"}
    overrides = _spec(preprocessing={"scale": 0.5, "std": [2, 2, 2]}).preprocessing
    from deployments.imaging import DETECTOR_PREPROCESSING

    applied = DETECTOR_PREPROCESSING.with_overrides(**overrides)
    assert (applied.scale, applied.std) == (0.5, (2.0, 2.0, 2.0))


def test_a_config_finds_its_services_by_name(tmp_path: Path) -> None:
    config = LisConfig(services=(_spec(),))
    assert config.service("svc").name == "svc"
    with pytest.raises(ServiceNotFound):
        config.service("nope")


def test_reading_the_config_loads_no_heavy_dependency() -> None:
    import subprocess
    import sys

    code = ("import sys, serve_app.config; print(sorted(m for m in ('ray', 'cv2', 'mxnet', 'dlr', "
            "'boto3', 'deployments') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_model_stores_secret_key_is_hidden_in_reprs() -> None:
    """Issue #17 (low): old code kept ``secret_access_key`` a plain string, printed whole by
    any repr of the spec (logs, tracebacks, Ray's dashboard)."""
    store = ModelStoreSpec(endpoint_url="https://s3.example", access_key_id="AKIAEXAMPLE",
                           secret_access_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(store) and "s3cr3t-value" not in str(store)
    assert store.secret_access_key is not None
    assert store.secret_access_key.get_secret_value() == "s3cr3t-value"


def test_http_tls_paths_are_relative_to_their_file_and_checked(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "lis.crt").write_text("certificate")
    key = tmp_path / "tls" / "lis.key"
    key.write_text("key")
    key.chmod(0o600)
    services = tmp_path / "lis.yaml"
    services.write_text("http: {tls: {cert_file: tls/lis.crt, key_file: tls/lis.key}}\n"
                        "services: []\n")
    tls = load_config([services]).http.tls
    assert tls is not None and (tls.cert_file, tls.key_file) == (tmp_path / "tls" / "lis.crt", key)
    key.chmod(0o644)
    services.write_text("http: {tls: {cert_file: tls/missing.crt, key_file: tls/lis.key}}\n"
                        "services: []\n")
    with pytest.raises(ConfigError) as refused:
        load_config([services])
    assert [str(issue) for issue in refused.value.issues] == [
        f"{services}: http.tls.cert_file: no such file: {tmp_path / 'tls' / 'missing.crt'}",
        f"{services}: http.tls.key_file: {key} is readable by group or others: chmod 600 it"]
