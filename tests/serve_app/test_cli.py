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


def test_status_of_a_lis_older_than_pipelines_lists_its_services(
        capsys: pytest.CaptureFixture[str]) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class OlderLis(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            known = self.path == "/services"
            body = json.dumps({"services": [{"name": "objectDetection", "algorithm":
                                             "object-detection", "platform": "x86-64",
                                             "state": "RUNNING", "replicas": {"RUNNING": 1}}]}
                              if known else {"error": {"type": "NotFound", "message": "-"}})
            self.send_response(200 if known else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), OlderLis)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["status", "--endpoint", endpoint]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "objectDetection" in out and "RUNNING" in out and "PIPELINE" not in out
