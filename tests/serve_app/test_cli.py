"""The `lis` command line without a running lis: dispatch, help, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_config import SEED_OD as SEED_OD_TEXT

from serve_app.cli import main

# The ML Object Detection page's create-connector-definition example.
SEED_OD = json.loads(SEED_OD_TEXT)


def test_validate_lists_the_services(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "connectors.json"
    path.write_text(json.dumps(SEED_OD))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "objectDetection: object-detection on ARMv7" in out and "ok: 1 service(s)" in out


def test_validate_lists_the_pipelines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    path = tmp_path / "lis.yaml"
    path.write_text("""\
services:
  - {LocalInferenceServiceName: objectDetection, algorithm: object-detection, platform: x86-64,
     model: m}
pipelines:
  - {name: inbox, service: objectDetection, source: {type: folder, path: in},
     sinks: [{type: mqtt}, {type: mqtt, topic: site/inbox, format: lis}]}
  - {name: door, service: objectDetection, source: {type: camera, device: 0}, interval_s: 2,
     sinks: [{type: mqtt, topic: site/door}]}
""")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pipeline inbox: folder -> objectDetection, as fast as it answers -> " \
           "ml/dlr/object-detection (greengrass-v2), site/inbox (lis)" in out
    assert "pipeline door: camera -> objectDetection, every 2 s -> site/door (greengrass-v2)" \
        in out
    assert "ok: 1 service(s), 2 pipeline(s)" in out


def test_validate_reports_every_problem_at_once(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    broken = json.loads(json.dumps(SEED_OD))
    parameters = broken["Connectors"][0]["Parameters"]
    parameters["LocalInferenceServiceTimeoutSeconds"] = "0"
    parameters["LocalInferenceServiceName"] = "-bad name"
    path = tmp_path / "connectors.json"
    path.write_text(json.dumps(broken))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "LocalInferenceServiceTimeoutSeconds" in err and "'0'" in err
    assert "LocalInferenceServiceName" in err and "-bad name" in err
    assert "MyObjectDetectionConnector" in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


def test_status_without_a_running_lis_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--endpoint", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
