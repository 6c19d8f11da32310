"""Fetching model sources: local paths as they are, S3 objects from a real S3-compatible server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.model_source import MARKER_SUFFIX, fetch_model
from serve_app.config import ModelStoreSpec
from vocabulary.errors import ArtifactError

BUCKET = "models"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, reached by boto3 over HTTP."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> ModelStoreSpec:
    monkeypatch.setenv("STORE_KEY", "testing")
    monkeypatch.setenv("STORE_SECRET", "testing")
    # moto serves plain HTTP on loopback.
    return ModelStoreSpec(endpoint_url=s3_endpoint, region="us-east-1", allow_insecure_store=True,
                          access_key_id_env="STORE_KEY", secret_access_key_env="STORE_SECRET")


@pytest.fixture()
def bucket(store: ModelStoreSpec) -> object:
    import boto3

    client = boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return client


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_local_folder_and_a_file_uri_are_used_in_place(tmp_path: Path) -> None:
    model = tmp_path / "my model"
    model.mkdir()
    assert fetch_model(str(model), destination=None, store=None, cache_dir=tmp_path / "c") == model
    uri = model.as_uri()  # file:///.../my%20model
    assert fetch_model(uri, destination=None, store=None, cache_dir=tmp_path / "c") == model


@pytest.mark.parametrize("source", ["/no/such/model", "file:///no/such/model.tar.gz"])
def test_a_missing_local_model_is_named(tmp_path: Path, source: str) -> None:
    with pytest.raises(ArtifactError) as caught:
        fetch_model(source, destination=None, store=None, cache_dir=tmp_path)
    assert source in str(caught.value) and "no such file" in str(caught.value)


def test_an_s3_object_is_downloaded_once_and_refreshed_when_it_changes(
        tmp_path: Path, store: ModelStoreSpec, bucket: object) -> None:
    bucket.put_object(Bucket=BUCKET, Key="ssd/model.tar.gz", Body=b"version 1")
    source = f"s3://{BUCKET}/ssd/model.tar.gz"

    first = fetch_model(source, destination=None, store=store, cache_dir=tmp_path / "cache")
    assert first.read_bytes() == b"version 1" and first.name == "model.tar.gz"
    assert first.is_relative_to(tmp_path / "cache")
    inode = first.stat().st_ino

    again = fetch_model(source, destination=None, store=store, cache_dir=tmp_path / "cache")
    assert again == first and again.stat().st_ino == inode  # same ETag: not downloaded again

    bucket.put_object(Bucket=BUCKET, Key="ssd/model.tar.gz", Body=b"version 2")
    refreshed = fetch_model(source, destination=None, store=store, cache_dir=tmp_path / "cache")
    assert refreshed == first and refreshed.read_bytes() == b"version 2"


def test_an_s3_object_goes_into_its_destination_path(tmp_path: Path, store: ModelStoreSpec,
                                                     bucket: object) -> None:
    bucket.put_object(Bucket=BUCKET, Key="classifier.zip", Body=b"zip bytes")
    destination = tmp_path / "ml" / "classifier"

    fetched = fetch_model(f"s3://{BUCKET}/classifier.zip", destination=destination, store=store,
                          cache_dir=tmp_path / "cache")

    assert fetched == destination / "classifier.zip" and fetched.read_bytes() == b"zip bytes"
    assert (destination / ("classifier.zip" + MARKER_SUFFIX)).is_file()
    assert not (tmp_path / "cache").exists()


def test_a_missing_s3_object_is_named(tmp_path: Path, store: ModelStoreSpec, bucket: object) -> None:
    source = f"s3://{BUCKET}/no/such.tar.gz"
    with pytest.raises(ArtifactError) as caught:
        fetch_model(source, destination=None, store=store, cache_dir=tmp_path)
    assert source in str(caught.value) and "no such object" in str(caught.value)


def test_an_unreachable_store_falls_back_to_the_copy_fetched_earlier(
        tmp_path: Path, store: ModelStoreSpec, bucket: object) -> None:
    bucket.put_object(Bucket=BUCKET, Key="yolo.tar.gz", Body=b"yolo")
    source = f"s3://{BUCKET}/yolo.tar.gz"
    fetched = fetch_model(source, destination=tmp_path / "dest", store=store, cache_dir=tmp_path)
    offline = store.model_copy(update={"endpoint_url": f"http://127.0.0.1:{_closed_port()}"})

    assert fetch_model(source, destination=tmp_path / "dest", store=offline,
                       cache_dir=tmp_path) == fetched
    with pytest.raises(ArtifactError) as caught:
        fetch_model(source, destination=tmp_path / "elsewhere", store=offline, cache_dir=tmp_path)
    assert source in str(caught.value) and "cannot fetch" in str(caught.value)


def test_a_missing_credentials_variable_is_named(tmp_path: Path, store: ModelStoreSpec,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORE_SECRET")
    with pytest.raises(ArtifactError, match="'STORE_SECRET'"):
        fetch_model(f"s3://{BUCKET}/x.tar.gz", destination=None, store=store, cache_dir=tmp_path)


def test_an_s3_uri_must_name_an_object(tmp_path: Path, store: ModelStoreSpec) -> None:
    with pytest.raises(ArtifactError, match="s3://<bucket>/<key>"):
        fetch_model(f"s3://{BUCKET}/folder/", destination=None, store=store, cache_dir=tmp_path)
