"""Issue #17, door 6: the ingress had no TLS.

On the code before this change lis's HTTP server had no certificate to serve
(``IngressHttpServer`` took host and port only, ``http`` had no ``tls`` key),
so the bearer token and the answers (which the seed code ``eval()``s) crossed
the network in clear; the SDK had no way to name the CA that signed a site's
certificate. Each test below failed there (reasoned from that code: the
``tls`` parameter and ``LIS_CA_FILE`` did not exist).

Now ``http.tls: {cert_file, key_file}`` makes lis's own uvicorn serve HTTPS,
and the SDK verifies the certificate always: against ``LIS_CA_FILE``, else
the system's CAs. A CA and a server certificate for 127.0.0.1 are made here
with ``openssl``; the service is real (lis's app and server over a real model).
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _proxied import classifier_services, run_proxied_lis
from _serving_process import SERVICE, ServingProcess

import greengrass_machine_learning_sdk as ml

TOKEN = "tls-test-token-0123456789abcdef"


def _openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt, and server.crt/server.key for 127.0.0.1 and localhost, signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=lis test CA", cwd=folder)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=lis",
             cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
             cwd=folder)
    (folder / "server.key").chmod(0o600)
    return folder


@pytest.fixture(scope="module")
def https_service(tiny_classifier_artifact: Path, certificates: Path
                  ) -> Iterator[ServingProcess]:
    service = ServingProcess(tiny_classifier_artifact, "--token", TOKEN,
                             "--cert-file", str(certificates / "server.crt"),
                             "--key-file", str(certificates / "server.key"))
    try:
        yield service
    finally:
        service.stop()


def _invoke() -> bytes:
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[:, :40] = (0, 0, 255)
    body = cv2.imencode(".jpg", frame)[1].tobytes()
    answer = ml.client("inference").invoke_inference_service(
        AlgoType="image-classification", ServiceName=SERVICE, ContentType="image/jpeg",
        Body=body)
    return answer["Body"].read()


@pytest.fixture
def sdk_environment(https_service: ServingProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIS_TRANSPORT", "http")
    monkeypatch.setenv("LIS_ENDPOINT", f"https://127.0.0.1:{https_service.port}")
    monkeypatch.setenv("LIS_TOKEN", TOKEN)
    monkeypatch.delenv("LIS_CA_FILE", raising=False)


@pytest.mark.usefixtures("sdk_environment")
def test_the_sdk_gets_its_answer_over_https_with_the_sites_ca(
        certificates: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: no certificate could be configured; the SDK could not name a CA."""
    monkeypatch.setenv("LIS_CA_FILE", str(certificates / "ca.crt"))
    probabilities = eval(_invoke())  # what the seed pages' code does with the body  # noqa: S307
    assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 1e-4


@pytest.mark.usefixtures("sdk_environment")
def test_without_the_ca_the_sdk_refuses_the_certificate_with_the_reason() -> None:
    with pytest.raises(ml.GreengrassDependencyException) as refused:
        _invoke()
    message = str(refused.value)
    assert message.startswith("service '/inference/imageClassification' is unavailable: the "
                              "TLS certificate of https://127.0.0.1:")
    # OpenSSL's own words for a certificate from an unknown CA, then what to do.
    assert "(unable to get local issuer certificate)" in message
    assert message.endswith("set LIS_CA_FILE to the CA that signed it, and call lis by a name "
                            "the certificate lists")


@pytest.mark.usefixtures("sdk_environment")
def test_the_token_is_still_required_over_https(certificates: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIS_CA_FILE", str(certificates / "ca.crt"))
    monkeypatch.delenv("LIS_TOKEN")
    with pytest.raises(ml.GreengrassInferenceException, match="missing or wrong bearer token"):
        _invoke()


def test_plain_http_to_the_tls_port_gets_no_answer(https_service: ServingProcess,
                                                   certificates: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", https_service.port, timeout=30)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection.request("POST", f"/inference/{SERVICE}", body=b"x",
                           headers={"Authorization": f"Bearer {TOKEN}"})
        connection.getresponse().read()
    connection.close()
    # The SDK never sends its token in clear when it was told to expect TLS.
    monkeypatch.setenv("LIS_TRANSPORT", "http")
    monkeypatch.setenv("LIS_ENDPOINT", f"http://127.0.0.1:{https_service.port}")
    monkeypatch.setenv("LIS_CA_FILE", str(certificates / "ca.crt"))
    with pytest.raises(ValueError, match="LIS_CA_FILE is set but LIS_ENDPOINT"):
        _invoke()


@pytest.mark.usefixtures("sdk_environment")
def test_lis_status_and_invoke_verify_the_certificate_too(
        https_service: ServingProcess, certificates: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from serve_app.cli import invoke
    from serve_app.cli.status import fetch_services
    from vocabulary.errors import ServiceUnavailable

    endpoint = f"https://127.0.0.1:{https_service.port}"
    with pytest.raises(ServiceUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_services(endpoint)
    monkeypatch.setenv("LIS_CA_FILE", str(certificates / "ca.crt"))
    assert [service["name"] for service in fetch_services(endpoint)] == [SERVICE]

    image = tmp_path / "frame.jpg"
    image.write_bytes(cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))[1].tobytes())
    parser = argparse.ArgumentParser()
    invoke.add_arguments(parser)
    assert invoke.run(parser.parse_args([SERVICE, str(image), "--endpoint", endpoint])) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_a_key_that_does_not_match_fails_the_start_naming_both_files(
        certificates: Path, tmp_path: Path) -> None:
    from serve_app._http_server import IngressHttpServer
    from vocabulary.errors import LisError
    from vocabulary.specs import TlsSpec

    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "other.key", "-out", "other.crt", "-days", "1",
             "-subj", "/CN=other", cwd=tmp_path)
    tls = TlsSpec(cert_file=certificates / "server.crt", key_file=tmp_path / "other.key")
    with pytest.raises(LisError) as refused:
        IngressHttpServer(object(), "127.0.0.1", 1, tls=tls)
    assert str(refused.value).startswith(
        f"cannot serve HTTPS with certificate {tls.cert_file} and key {tls.key_file}: ")
    assert "KEY_VALUES_MISMATCH" in str(refused.value)


@pytest.mark.slow
def test_on_a_cluster_ray_serves_proxies_serve_https_with_the_certificate(
        certificates: Path, tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    """The cluster path: Ray Serve's proxies (Ray's code) get the certificate from
    ``deploy``. Old code: no ``tls`` key; then, for a while, ``build_app`` refused it."""
    tls = (f"http:\n  tls: {{cert_file: {certificates / 'server.crt'}, "
           f"key_file: {certificates / 'server.key'}}}\n")
    services = classifier_services(tmp_path, tiny_classifier_artifact, tls)
    seen = run_proxied_lis(services, ["127.0.0.1"], LIS_CA_FILE=str(certificates / "ca.crt"))
    assert seen["127.0.0.1"] == [200, None]
    assert seen["plain http"] in ("RemoteDisconnected", "ConnectionResetError", "BadStatusLine"), seen
