"""Where feedback samples are uploaded: an S3-compatible store, or a local folder.

Both stores put one object per sample at ``<s3-prefix>/<sample-id>.<file-ext>``
(``object_key``) in the config's bucket, with the config's content type and the
caller's metadata:

* ``S3Store`` talks to AWS S3 or any S3-compatible server through boto3 (the
  endpoint URL and credentials come from ``StorageSpec``); the metadata become
  S3 user metadata (``x-amz-meta-*``), every value a string.
* ``LocalFolderStore`` is for devices that are never online: the object is the
  file ``<root>/<bucket>/<key>``, and ``<file>.metadata.json`` beside it holds
  ``{"ContentType": ..., "Metadata": {...}}``. Files are written atomically and
  fsync'd, so a stored sample survives a power cut.

Putting the same key twice stores the same bytes twice: re-uploading a sample
after a crash overwrites, never duplicates. ``permanent_failure`` tells an
upload the store refused (retrying cannot help) from an outage.
"""

from __future__ import annotations

import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vocabulary.errors import InvalidArgument, LisError, RequestError
from vocabulary.feedback_specs import StorageSpec

__all__ = [
    "METADATA_SUFFIX",
    "LocalFolderStore",
    "S3Store",
    "SampleStore",
    "StoredObject",
    "object_key",
    "open_store",
    "permanent_failure",
    "s3_metadata",
]

METADATA_SUFFIX = ".metadata.json"
# Connection problems are retried by the feedback pipeline with its own backoff;
# boto3's own retries would only hide an outage behind long stalls.
_S3_CONNECT_TIMEOUT_S = 5
_S3_READ_TIMEOUT_S = 30
_S3_ATTEMPTS = 2
# 4xx answers that say nothing of the sample: credentials, the clock, throttling,
# a slow request. They fail every sample alike and pass; the sample is kept.
_PASSING_STATUSES = frozenset({401, 403, 408, 429})
_PASSING_CODES = frozenset({"ExpiredToken", "RequestTimeout", "RequestTimeTooSkewed",
                            "SlowDown", "Throttling", "ThrottlingException",
                            "TokenRefreshRequired"})


@dataclass(frozen=True)
class StoredObject:
    """Where an uploaded sample now is."""

    bucket: str
    key: str
    url: str  # s3://bucket/key, or file:///root/bucket/key for a local store
    etag: str | None = None

    def response(self) -> dict[str, Any]:
        """The upload response a ``success`` status carries."""
        return {"bucket": self.bucket, "key": self.key, "ETag": self.etag}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredObject:
        return cls(bucket=data["bucket"], key=data["key"], url=data["url"], etag=data.get("etag"))


class SampleStore(ABC):
    """An object store for samples; ``put`` raises on any failure (the caller retries)."""

    @abstractmethod
    def put(self, bucket: str, key: str, body: bytes, *, content_type: str,
            metadata: Mapping[str, Any]) -> StoredObject:
        """Store ``body`` at ``bucket``/``key``, overwriting any object already there."""


def object_key(prefix: str, sample_id: str, file_ext: str) -> str:
    """``<prefix>/<sample_id>.<file_ext>``; no prefix, no slash; no extension, no dot."""
    name = f"{sample_id}.{file_ext}" if file_ext else sample_id
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def s3_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The caller's metadata as S3 user metadata: strings as they are, others as JSON."""
    return {str(key): value if isinstance(value, str) else json.dumps(value)
            for key, value in metadata.items()}


def permanent_failure(error: Exception) -> bool:
    """Whether a failed ``put`` would fail again however often it is retried.

    So it is when the store answered 4xx for the sample itself (no such bucket,
    a key or metadata it refuses) or the request could not even be made (lis's
    own ``RequestError``, botocore's parameter validation). A connection error,
    a 5xx, throttling, credentials or the clock are an outage: they pass.
    """
    if isinstance(error, RequestError):
        return True
    response = getattr(error, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response.get("Error", {}).get("Code", "")
        return (400 <= status < 500 and status not in _PASSING_STATUSES
                and code not in _PASSING_CODES)
    return _invalid_parameters(error)


def _invalid_parameters(error: Exception) -> bool:
    try:
        from botocore.exceptions import ParamValidationError
    except ImportError:  # no boto3: not an S3 store's error
        return False
    return isinstance(error, ParamValidationError)


def open_store(spec: StorageSpec) -> SampleStore:
    """The store ``spec`` names: a local folder for ``file:///...``, S3 otherwise."""
    root = spec.local_root
    return LocalFolderStore(root) if root is not None else S3Store(spec)


class S3Store(SampleStore):
    """AWS S3 or an S3-compatible server (MinIO, Ceph, moto, ...) through boto3."""

    def __init__(self, spec: StorageSpec) -> None:
        self.spec = spec
        self._client: Any = None

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str,
            metadata: Mapping[str, Any]) -> StoredObject:
        response = self._s3().put_object(Bucket=bucket, Key=key, Body=body,
                                         ContentType=content_type, Metadata=s3_metadata(metadata))
        return StoredObject(bucket=bucket, key=key, url=f"s3://{bucket}/{key}",
                            etag=response.get("ETag"))

    def _s3(self) -> Any:
        if self._client is None:
            self._client = _boto3_client(self.spec)
        return self._client


def _boto3_client(spec: StorageSpec) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise LisError("feedback upload to S3 needs boto3: pip install boto3 "
                       "(or use a local store, s3_endpoint_url: file:///...)") from exc
    secret = spec.secret_access_key.get_secret_value() if spec.secret_access_key else None
    config = Config(connect_timeout=_S3_CONNECT_TIMEOUT_S, read_timeout=_S3_READ_TIMEOUT_S,
                    retries={"total_max_attempts": _S3_ATTEMPTS, "mode": "standard"})
    return boto3.session.Session().client(
        "s3", endpoint_url=spec.s3_endpoint_url, region_name=spec.region,
        aws_access_key_id=spec.access_key_id, aws_secret_access_key=secret, config=config)


class LocalFolderStore(SampleStore):
    """A folder standing in for S3: ``<root>/<bucket>/<key>`` plus a metadata sidecar."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def put(self, bucket: str, key: str, body: bytes, *, content_type: str,
            metadata: Mapping[str, Any]) -> StoredObject:
        path = self._path(bucket, key)
        # Camera frames: readable by lis's user only, as on the spool.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sidecar = {"ContentType": content_type, "Metadata": s3_metadata(metadata)}
        _write_durably(path.with_name(path.name + METADATA_SUFFIX), json.dumps(sidecar).encode())
        _write_durably(path, body)
        return StoredObject(bucket=bucket, key=key, url=path.as_uri())

    def _path(self, bucket: str, key: str) -> Path:
        bucket_dir = (self.root / bucket).resolve()
        path = (bucket_dir / key).resolve()
        if bucket_dir.parent != self.root.resolve() or bucket_dir not in path.parents:
            raise InvalidArgument("object", f"{bucket}/{key}",
                                  f"a path inside the local store {self.root}")
        return path


def _write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
