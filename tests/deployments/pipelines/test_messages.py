"""The messages a pipeline publishes: the Greengrass v2 DLR components' exactly, and lis's own."""

from __future__ import annotations

import datetime as dt

import numpy as np

from deployments.pipelines.messages import Inferred, greengrass_v2_message, lis_message
from vocabulary.pipeline_specs import MqttSink

FRAME_TIME = dt.datetime(2026, 12, 4, 10, 1, 2, 101000, tzinfo=dt.timezone.utc)
NOW = dt.datetime(2026, 12, 4, 11, 1, 2, 123456)


def _result(algorithm: str, output: object, labels: tuple[str, ...] | None) -> Inferred:
    return Inferred("door", "svc", algorithm, "camera:0", 812, FRAME_TIME, 57, output, labels,
                    (512, 512))


def test_classification_message_is_the_dlr_components_own() -> None:
    # 7 classes: top 5 are 0.4, 0.35, 0.3, 0.2, 0.1; only those >= 0.3 are kept, best first.
    output = [0.1, 0.4, 0.0125, 0.35, 0.2, 0.3, 0.0375]
    labels = ("cat", "dog", "cow", "fox", "owl", "hen", "pig")
    message = greengrass_v2_message(_result("image-classification", output, labels),
                                    MqttSink(), now=NOW)
    assert message == {
        "timestamp": "2026-12-04 11:01:02.123456",
        "inference-type": "image-classification",
        "inference-description": "Top 5 predictions with score 0.3 or above ",
        "inference-results": [{"Label": "dog", "Score": "0.4"}, {"Label": "fox", "Score": "0.35"},
                              {"Label": "hen", "Score": "0.3"}],
    }
    assert list(message) == ["timestamp", "inference-type", "inference-description",
                             "inference-results"]


def test_classification_top_k_threshold_and_labels_override() -> None:
    output = [0.1, 0.4, 0.0125, 0.35, 0.2, 0.3, 0.0375]
    labels = ("cat", "dog", "cow", "fox", "owl", "hen", "pig")
    result = _result("image-classification", output, labels)
    two = greengrass_v2_message(result, MqttSink(top_k=2, score_threshold=0.05), now=NOW)
    assert two["inference-description"] == "Top 2 predictions with score 0.05 or above "
    assert two["inference-results"] == [{"Label": "dog", "Score": "0.4"},
                                        {"Label": "fox", "Score": "0.35"}]
    only = greengrass_v2_message(result, MqttSink(score_threshold=0.0, labels=("owl", "cat")))
    assert [r["Label"] for r in only["inference-results"]] == ["owl", "cat"]
    # No label file: class numbers, as strings.
    unnamed = greengrass_v2_message(_result("image-classification", output, None), MqttSink())
    assert [r["Label"] for r in unnamed["inference-results"]] == ["1", "3", "5"]


def test_detection_message_has_boundaries_in_the_models_input_pixels() -> None:
    output = {"prediction": [[1, 0.9, 0.1, 0.2, 0.5, 0.75], [0, 0.31, 0.0, 0.0, 1.0, 1.0],
                             [1, 0.29, 0.3, 0.3, 0.4, 0.4]]}
    message = greengrass_v2_message(_result("object-detection", output, ("cat", "dog")),
                                    MqttSink(), now=NOW)
    assert message == {
        "timestamp": "2026-12-04 11:01:02.123456",
        "inference-type": "object-detection",
        "inference-description": "Top 5 predictions with score 0.3 or above ",
        "inference-results": [
            {"Label": "dog", "Score": "0.9", "Boundaries": "[ 51.2 102.4 256.  384. ]"},
            {"Label": "cat", "Score": "0.31", "Boundaries": "[  0.   0. 512. 512.]"},
        ],
    }
    # The components' consumers parse Boundaries back with NumPy.
    box = message["inference-results"][0]["Boundaries"]
    assert np.allclose(np.fromstring(box[1:-1], sep=" "), [51.2, 102.4, 256, 384])


def test_detection_top_k_and_labels() -> None:
    rows = [[i % 2, 0.9 - 0.01 * i, 0, 0, 1, 1] for i in range(8)]
    result = _result("object-detection", {"prediction": rows}, ("cat", "dog"))
    assert len(greengrass_v2_message(result, MqttSink())["inference-results"]) == 5
    assert len(greengrass_v2_message(result, MqttSink(top_k=3))["inference-results"]) == 3
    cats = greengrass_v2_message(result, MqttSink(labels=("cat",)))["inference-results"]
    assert [r["Label"] for r in cats] == ["cat"] * 4


def test_lis_message_carries_the_services_output_and_the_frames_provenance() -> None:
    for algorithm, output in (("image-classification", [0.2, 0.8]),
                              ("object-detection", {"prediction": [[0, 0.9, 0, 0, 1, 1]]})):
        assert lis_message(_result(algorithm, output, ("a", "b"))) == {
            "pipeline": "door", "service": "svc", "inference-type": algorithm,
            "source": "camera:0", "frame": 812, "frame-time": "2026-12-04T10:01:02.101000+00:00",
            "sequence": 57, "output": output}
