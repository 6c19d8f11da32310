"""Issue #17, door 5: nothing pinned the model that was fetched, and plain HTTP stores were fine.

On the code before this change a service had no way to say which model it
must run: a model swapped in the store, on the way (``s3://`` over an
``http://`` endpoint was accepted silently) or in the local cache was loaded,
and a compiled detector is native code run in the replica. There
``model_sha256`` was an unknown key, ``fetch_model`` took no digest and
``ModelStoreSpec(endpoint_url="http://...")`` was valid: each test below failed
there (by reasoning from that code: the pin's key and parameter did not exist).

Now a service may pin ``model_sha256`` (an archive's sha256, or lis's folder
digest, ``deployments.archive.model_digest``), checked on every start, and a
store reached over ``http://`` is refused unless ``allow_insecure_store``.
The store here is the real S3-compatible server (moto), the artifacts real, and
one test deploys a pinned service with lis on a Ray of its own (a child process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from peers import REGION, S3Server

from deployments.archive import materialize, model_digest, pack_folder
from deployments.model_source import fetch_model
from serve_app.config import load_config
from vocabulary.errors import ArtifactError, ConfigError
from vocabulary.specs import ModelStoreSpec

BUCKET = "pinned-models"
KEY = "classifier/model.tar.gz"
SOURCE = f"s3://{BUCKET}/{KEY}"


def _store(s3_server: S3Server, *, allow_insecure: bool) -> ModelStoreSpec:
    return ModelStoreSpec(endpoint_url=s3_server.endpoint, region=REGION,
                          access_key_id="testing", secret_access_key="testing",
                          allow_insecure_store=allow_insecure)


def _upload(s3_server: S3Server, archive: Path) -> None:
    client = s3_server.client()
    if BUCKET not in [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(archive), BUCKET, KEY)


def _tampered(folder: Path, tmp_path: Path) -> Path:
    """The same artifact with its labels changed: a one-file swap, as an attacker would."""
    copy = tmp_path / "tampered-folder"
    subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
    labels = next(copy.glob("*labels*"), None) or next(p for p in copy.iterdir() if p.is_file())
    labels.write_bytes(labels.read_bytes() + b"\n")
    return copy


def test_a_tampered_model_in_the_store_is_refused_naming_both_digests(
        tiny_classifier_artifact: Path, s3_server: S3Server, tmp_path: Path) -> None:
    good = pack_folder(tiny_classifier_artifact, tmp_path / "good.tar.gz")
    pin = model_digest(good)
    assert pin == subprocess.run(["sha256sum", str(good)], capture_output=True, text=True,
                                 check=True).stdout.split()[0]
    store = _store(s3_server, allow_insecure=True)
    _upload(s3_server, good)
    fetched = fetch_model(SOURCE, destination=None, store=store, cache_dir=tmp_path / "cache",
                          sha256=pin)
    extracted = materialize(fetched, tmp_path / "extracted")
    assert sorted(p.name for p in extracted.iterdir()) == \
        sorted(p.name for p in tiny_classifier_artifact.iterdir())

    bad = pack_folder(_tampered(tiny_classifier_artifact, tmp_path), tmp_path / "bad.tar.gz")
    _upload(s3_server, bad)
    with pytest.raises(ArtifactError) as refused:
        fetch_model(SOURCE, destination=None, store=store, cache_dir=tmp_path / "cache",
                    sha256=pin)
    message = str(refused.value)
    assert SOURCE in message and pin in message and model_digest(bad) in message
    assert "does not match the pinned model_sha256" in message


def test_a_tampered_cached_copy_is_refused(tiny_classifier_artifact: Path, s3_server: S3Server,
                                           tmp_path: Path) -> None:
    good = pack_folder(tiny_classifier_artifact, tmp_path / "good.tar.gz")
    pin = model_digest(good)
    store = _store(s3_server, allow_insecure=True)
    _upload(s3_server, good)
    cached = fetch_model(SOURCE, destination=None, store=store, cache_dir=tmp_path / "cache",
                         sha256=pin)
    with open(cached, "ab") as tail:
        tail.write(b"\0" * 512)  # the store's ETag is unchanged: the copy would be reused
    with pytest.raises(ArtifactError, match="does not match the pinned model_sha256"):
        fetch_model(SOURCE, destination=None, store=store, cache_dir=tmp_path / "cache",
                    sha256=pin)


def test_a_pinned_folder_uses_the_documented_digest_and_refuses_a_change(
        tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    subprocess.run(["cp", "-r", str(tiny_classifier_artifact), str(folder)], check=True)
    # The shell way docs/configuration.md gives to print a folder's digest.
    shell = subprocess.run(
        ["bash", "-c", "(cd \"$0\" && find . -type f -printf '%P\\0' | LC_ALL=C sort -z "
                       "| xargs -0 sha256sum) | sha256sum", str(folder)],
        capture_output=True, text=True, check=True)
    pin = shell.stdout.split()[0]
    assert model_digest(folder) == pin
    assert fetch_model(str(folder), destination=None, store=None, cache_dir=tmp_path,
                       sha256=pin.upper()) == folder
    changed = _tampered(folder, tmp_path)
    with pytest.raises(ArtifactError, match=f"does not match the pinned model_sha256 {pin}"):
        fetch_model(str(changed), destination=None, store=None, cache_dir=tmp_path, sha256=pin)
    (folder / "extra.so").symlink_to("/etc/hostname")
    with pytest.raises(ArtifactError, match="extra.so is a symbolic link"):
        fetch_model(str(folder), destination=None, store=None, cache_dir=tmp_path, sha256=pin)


def test_an_http_store_is_refused_unless_allowed(tiny_classifier_artifact: Path,
                                                 s3_server: S3Server, tmp_path: Path) -> None:
    config = tmp_path / "services.yaml"
    service = f"""\
services:
  - LocalInferenceServiceName: pinned
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {SOURCE}
    model_sha256: "{"0" * 64}"
"""
    config.write_text(service + f"model_store: {{endpoint_url: '{s3_server.endpoint}'}}\n")
    with pytest.raises(ConfigError) as refused:
        load_config([config])
    assert f"model_store: endpoint_url {s3_server.endpoint!r} is plain HTTP" in str(refused.value)
    assert "allow_insecure_store" in str(refused.value)
    with pytest.raises(ArtifactError, match="is plain HTTP"):  # a spec built in code, too
        fetch_model(SOURCE, destination=None, cache_dir=tmp_path,
                    store=ModelStoreSpec.model_construct(endpoint_url=s3_server.endpoint))

    config.write_text(service + f"model_store: {{endpoint_url: '{s3_server.endpoint}', "
                                "allow_insecure_store: true}\n")
    loaded = load_config([config])
    assert loaded.services[0].model_sha256 == "0" * 64
    good = pack_folder(tiny_classifier_artifact, tmp_path / "good.tar.gz")
    _upload(s3_server, good)
    fetched = fetch_model(SOURCE, destination=None, store=_store(s3_server, allow_insecure=True),
                          cache_dir=tmp_path / "cache")
    assert model_digest(fetched) == model_digest(good)


def test_a_pinned_service_given_another_model_fails_to_start_naming_both_digests(
        tiny_classifier_artifact: Path, tmp_path: Path) -> None:
    """The real thing: lis deploys the service on a Ray of its own; the replica's start
    fails, and lis reports the service failed with the pin's error (old code: RUNNING)."""
    actual = model_digest(tiny_classifier_artifact)
    pinned = "ab" * 32
    services = tmp_path / "services.yaml"
    services.write_text(f"""\
services:
  - LocalInferenceServiceName: pinned
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {tiny_classifier_artifact}
    model_sha256: "{pinned}"
    num_cpus: 0.5
""")
    here = Path(__file__).resolve().parent
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1]), str(here)])}
    run = subprocess.run([sys.executable, str(here / "_pinned_service.py"), str(services)],
                         env=environment, capture_output=True, text=True, timeout=600)
    # Ray's own processes may print to the same stdout; the script's line starts with a state.
    reports = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "RUNNING"))]
    assert reports, run.stdout[-2000:] + run.stderr[-2000:]
    report = reports[-1]
    assert report.startswith("FAILED services failed to start: pinned: "), report
    assert (f"ArtifactError: model artifact {tiny_classifier_artifact}: sha256 {actual} does "
            f"not match the pinned model_sha256 {pinned}") in report


def test_a_malformed_pin_is_a_config_error(tmp_path: Path, tiny_classifier_artifact: Path) -> None:
    config = tmp_path / "services.yaml"
    config.write_text(f"""\
services:
  - LocalInferenceServiceName: pinned
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {tiny_classifier_artifact}
    model_sha256: not-a-digest
""")
    with pytest.raises(ConfigError, match="model_sha256"):
        load_config([config])
