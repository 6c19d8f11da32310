"""The ingress's bearer token, end to end: ``lis up`` with ``LIS_TOKEN`` set, in its own process.

Its own process and Ray instance, because this session's shared lis
(``running_lis``) serves without a token and one process holds one Ray.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from waiting import wait_for_line

import greengrass_machine_learning_sdk as ml
from serve_app import http_token as token_module
from serve_app.http_token import http_token

TOKEN = "correct-horse-battery-staple"
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60
SERVICES = """\
services:
  - LocalInferenceServiceName: guarded
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {model}
    num_cpus: 0.25
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jpeg() -> bytes:
    image = np.full((64, 64, 3), 120, np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture(scope="module")
def guarded(tiny_classifier_artifact: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    """``LIS_TOKEN=... lis up services.yaml --port P`` serving until stopped; its endpoint."""
    folder = tmp_path_factory.mktemp("guarded")
    config = folder / "services.yaml"
    config.write_text(SERVICES.format(model=tiny_classifier_artifact))
    port = _free_port()
    env = {**os.environ, "LIS_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    log = folder / "lis-up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("lis")), "up", str(config), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_line(process, log, "lis: serving on", timeout_s=START_TIMEOUT_S, what="lis up")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)  # lis up shuts Serve down on Ctrl-C
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post(endpoint: str, **headers: str) -> requests.Response:
    return requests.post(f"{endpoint}/inference/guarded", data=_jpeg(),
                         headers={"Content-Type": "image/jpeg", **headers}, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": TOKEN}],
                         ids=["no token", "wrong token", "no Bearer prefix"])
def test_every_route_but_healthz_answers_401_without_the_token(guarded: str,
                                                               headers: dict) -> None:
    refused = [_post(guarded, **headers),
               requests.get(f"{guarded}/services", headers=headers, timeout=60),
               requests.get(f"{guarded}/readyz", headers=headers, timeout=60)]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert {r.json()["error"]["type"] for r in refused} == {"Unauthorized"}
    assert requests.get(f"{guarded}/healthz", headers=headers, timeout=60).status_code == 200


@pytest.mark.slow
def test_the_token_opens_every_route(guarded: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _post(guarded, **auth).status_code == 200
    services = requests.get(f"{guarded}/services", headers=auth, timeout=60)
    assert services.status_code == 200
    assert services.json()["services"][0]["name"] == "guarded"


@pytest.mark.slow
def test_the_sdk_client_sends_lis_token(guarded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIS_TRANSPORT", "http")
    monkeypatch.setenv("LIS_ENDPOINT", guarded)
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    client = ml.client("inference")
    with pytest.raises(ml.GreengrassInferenceException, match="bearer token"):
        client.invoke_inference_service(AlgoType="image-classification", ServiceName="guarded",
                                         ContentType="image/jpeg", Body=_jpeg())
    monkeypatch.setenv("LIS_TOKEN", TOKEN)
    answer = ml.client("inference").invoke_inference_service(
        AlgoType="image-classification", ServiceName="guarded", ContentType="image/jpeg",
        Body=_jpeg())
    assert answer["Body"].read().startswith(b"[")


@pytest.mark.slow
def test_lis_status_sends_lis_token(guarded: str) -> None:
    lis = str(Path(sys.executable).with_name("lis"))
    env = {k: v for k, v in os.environ.items() if k != "LIS_TOKEN"}
    refused = subprocess.run([lis, "status", "--endpoint", guarded], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "missing or wrong bearer token" in refused.stderr
    allowed = subprocess.run([lis, "status", "--endpoint", guarded],
                             env={**env, "LIS_TOKEN": TOKEN}, capture_output=True, text=True,
                             timeout=60)
    assert allowed.returncode == 0 and "guarded" in allowed.stdout


# --- when a token is required ------------------------------------------------------------


def test_loopback_needs_no_token_unless_one_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    assert http_token("127.0.0.1") is None
    monkeypatch.setenv("LIS_TOKEN", TOKEN)
    assert http_token("127.0.0.1") == TOKEN


def test_beyond_loopback_a_token_is_made_once_and_kept_private(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIS_TOKEN", raising=False)
    monkeypatch.setattr(token_module, "TOKEN_FILE", tmp_path / "lis" / "http-token")
    made = http_token("0.0.0.0")
    assert made and len(made) >= 32
    assert (token_module.TOKEN_FILE.stat().st_mode & 0o777) == 0o600
    assert http_token("0.0.0.0") == made  # the same token on the next start
