"""Fetching a service's model source to a local path.

A model source is what ``ServiceSpec.model_source`` holds: a local path, a
``file://`` URI, or ``s3://bucket/key`` (AWS S3 or any S3-compatible store, as
``ModelStoreSpec`` says). Local sources are used where they are. An S3 object is
downloaded once and kept; a later fetch asks the store for the object's ETag and
downloads again only when it changed, as a Greengrass redeploy refreshed an ML
resource whose source changed. When the store cannot be reached, a copy fetched
earlier is used (an edge device must restart without its network).

A service may pin its model (``ServiceSpec.model_sha256``): the fetched file or
folder must then have that digest (``deployments.archive.model_digest``), checked
on every start, the copy fetched earlier included, or the fetch fails naming
both digests. A store reached over plain ``http://`` is refused unless its
spec says ``allow_insecure_store`` (a compiled detector is native code that
runs in the replica; the store's credentials travel with each request).

Archives are not extracted here: ``deployments.archive.materialize`` does that.
boto3 is imported only when an ``s3://`` source is fetched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from deployments.archive import model_digest
from vocabulary.errors import ArtifactError
from vocabulary.specs import insecure_store

if TYPE_CHECKING:
    from vocabulary.specs import ModelStoreSpec

__all__ = ["MARKER_SUFFIX", "check_pin", "fetch_model"]

# Written next to a downloaded object: which source and ETag the file holds.
MARKER_SUFFIX = ".lis-source.json"
_CONNECT_TIMEOUT_S = 5
_READ_TIMEOUT_S = 60

log = logging.getLogger("lis.model_source")


def fetch_model(source: str, *, destination: Path | None, store: ModelStoreSpec | None,
                cache_dir: Path, sha256: str | None = None) -> Path:
    """The model ``source`` as a local file or folder, downloading it if it is remote.

    ``destination`` (a folder, e.g. MLModelDestinationPath) receives a downloaded
    object; without one (or when it cannot be written) it goes under ``cache_dir``.
    With ``sha256`` the result must have that digest (``model_digest``).
    Raises ``ArtifactError`` naming the source when it cannot be had or does not match.
    """
    if source.startswith("s3://"):
        path = _fetch_s3(source, destination, store, Path(cache_dir))
    else:
        path = _local_path(source)
        if not path.exists():
            raise ArtifactError(source, f"no such file or folder: {path}")
    if sha256 is not None:
        check_pin(source, path, sha256)
    return path


def check_pin(source: str, path: Path, expected: str) -> None:
    """``ArtifactError`` unless the model at ``path`` has the pinned digest ``expected``."""
    actual = model_digest(path)
    if actual != expected.lower():
        fetched = "" if str(path) == source else f" of {path}"
        raise ArtifactError(source, f"sha256 {actual}{fetched} does not match the pinned "
                                    f"model_sha256 {expected.lower()}: the model was changed "
                                    "or replaced; refusing to load it")


def _local_path(source: str) -> Path:
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme:
        raise ArtifactError(source, f"unsupported scheme {parsed.scheme!r}: use a local path, "
                                    "file:// or s3://")
    return Path(source).expanduser()


# --- S3 --------------------------------------------------------------------------------


def _split_s3(source: str) -> tuple[str, str]:
    parsed = urlparse(source)
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key or key.endswith("/"):
        raise ArtifactError(source, "expected s3://<bucket>/<key> naming one object "
                                    "(a .tar.gz, .zip or model file)")
    return parsed.netloc, key


def _target_folder(source: str, destination: Path | None, store: ModelStoreSpec | None,
                   cache_dir: Path) -> Path:
    if destination is not None:
        try:
            Path(destination).mkdir(parents=True, exist_ok=True)
            if os.access(destination, os.W_OK):
                return Path(destination)
        except OSError:
            pass
        log.warning("model destination %s is not writable; fetching %s into the cache %s",
                    destination, source, cache_dir)
    endpoint = (store.endpoint_url if store else None) or "aws"
    digest = hashlib.sha256(f"{endpoint} {source}".encode()).hexdigest()[:16]
    folder = cache_dir / "s3" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _s3_client(store: ModelStoreSpec | None) -> Any:
    if store is not None and insecure_store(store):
        # Also refused when the config is read; this holds for specs built in code.
        raise ArtifactError("s3://", f"model_store endpoint_url {store.endpoint_url!r} is plain "
                                     "HTTP: use https://, or set allow_insecure_store")
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:  # boto3 ships with lis's dev extra
        raise ArtifactError("s3://", "s3:// model sources need boto3: "
                                     "pip install 'lis[dev]' (or boto3)") from error
    kwargs: dict[str, Any] = {}
    if store is not None:
        kwargs = _store_kwargs(store)
    config = Config(connect_timeout=_CONNECT_TIMEOUT_S, read_timeout=_READ_TIMEOUT_S,
                    retries={"max_attempts": 3, "mode": "standard"},
                    # S3-compatible stores (MinIO, moto) rarely serve virtual-host buckets.
                    s3={"addressing_style": "path"} if kwargs.get("endpoint_url") else None)
    return boto3.client("s3", config=config, **kwargs)


def _store_kwargs(store: ModelStoreSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if store.endpoint_url:
        kwargs["endpoint_url"] = store.endpoint_url
    if store.region:
        kwargs["region_name"] = store.region
    key_id = store.access_key_id
    secret = store.secret_access_key.get_secret_value() if store.secret_access_key else None
    if store.access_key_id_env and store.secret_access_key_env:
        key_id = _env(store.access_key_id_env)
        secret = _env(store.secret_access_key_env)
    if key_id and secret:
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = key_id, secret
    return kwargs


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ArtifactError("s3://", f"model_store names environment variable {name!r}, "
                                     "which is not set")
    return value


def _read_marker(marker: Path) -> dict[str, str]:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomically(path: Path, write: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fetch_s3(source: str, destination: Path | None, store: ModelStoreSpec | None,
              cache_dir: Path) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _split_s3(source)
    target = _target_folder(source, destination, store, cache_dir) / PurePosixPath(key).name
    marker = target.with_name(target.name + MARKER_SUFFIX)
    known = _read_marker(marker)
    have_copy = target.exists() and known.get("source") == source
    client = _s3_client(store)
    try:
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
        if have_copy and known.get("etag") == etag:
            return target
        _write_atomically(target, lambda tmp: client.download_file(bucket, key, tmp))
    except ClientError as error:
        raise ArtifactError(source, _client_problem(error, store)) from error
    except BotoCoreError as error:  # unreachable endpoint, no credentials, ...
        if have_copy:
            log.warning("cannot reach the model store for %s (%s); using the copy fetched "
                        "earlier: %s", source, error, target)
            return target
        raise ArtifactError(source, f"cannot fetch from the model store "
                                    f"({_endpoint(store)}): {error}") from error
    _write_atomically(marker, lambda tmp: Path(tmp).write_text(
        json.dumps({"source": source, "etag": etag})))
    return target


def _endpoint(store: ModelStoreSpec | None) -> str:
    return (store.endpoint_url if store else None) or "AWS S3"


def _client_problem(error: Any, store: ModelStoreSpec | None) -> str:
    code = str(error.response.get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NotFound"):
        return f"no such object in the model store ({_endpoint(store)})"
    if code == "NoSuchBucket":
        return f"no such bucket in the model store ({_endpoint(store)})"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied by the model store ({_endpoint(store)}): check its credentials"
    return f"the model store ({_endpoint(store)}) refused: {error}"
