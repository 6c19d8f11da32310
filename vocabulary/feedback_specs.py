"""Typed configuration of the ML Feedback connector.

What a feedback pipeline needs, validated once: the connector's own
``FeedbackConfigurationMap`` and ``RequestLimit`` (``FeedbackConfig`` per config
id, and its sampling strategy) and lis's ``feedback:`` keys (where "S3" and the
MQTT broker are, and the spool). ``serve_app.feedback_config`` reads the files
into these; the ML Feedback pipeline in ``deployments.feedback`` runs on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from vocabulary.connectors import SERVICE_NAME_PATTERN

__all__ = [
    "BUCKET_NAME_PATTERN",
    "CONFIG_ID_PATTERN",
    "DEFAULT_MQTT_HOST",
    "DEFAULT_MQTT_KEEPALIVE_S",
    "DEFAULT_MQTT_PORT",
    "DEFAULT_SPOOL_DIRECTORY",
    "DEFAULT_SPOOL_MAX_BYTES",
    "REQUEST_LIMIT_PATTERN",
    "STRATEGY_NAMES",
    "Entropy",
    "FeedbackConfig",
    "FeedbackConnectorSpec",
    "LeastConfidence",
    "Margin",
    "MqttSpec",
    "MqttTlsSpec",
    "RandomSampling",
    "SamplingStrategy",
    "SpoolSpec",
    "StorageSpec",
]

# A feedback config id follows the same rule as a service name.
CONFIG_ID_PATTERN = f"^{SERVICE_NAME_PATTERN}$"
BUCKET_NAME_PATTERN = r"^[a-z0-9\.\-]{3,63}$"
REQUEST_LIMIT_PATTERN = r"^$|^[0-9]{1,3}$"
STRATEGY_NAMES = ("RANDOM_SAMPLING", "LEAST_CONFIDENCE", "MARGIN", "ENTROPY")

DEFAULT_MQTT_HOST = "127.0.0.1"
DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTT_KEEPALIVE_S = 60
DEFAULT_SPOOL_DIRECTORY = Path("~/.local/state/lis/feedback-spool")
DEFAULT_SPOOL_MAX_BYTES = 1 << 30

_SPEC = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
# Rates and thresholds come from JSON numbers: a quoted "0.5" or a boolean is a
# mistake in the map, not something to coerce silently.
_Fraction = Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)]


# --- the connector's own configuration (FeedbackConfigurationMap) ---------------


class RandomSampling(BaseModel):
    """Keep a sample when ``random() < rate``."""

    model_config = _SPEC
    strategy_name: Literal["RANDOM_SAMPLING"] = Field("RANDOM_SAMPLING", alias="strategy-name")
    rate: _Fraction = Field(description="Fraction of samples kept, in [0, 1].")


class LeastConfidence(BaseModel):
    """Keep a sample when its highest score is below ``threshold``."""

    model_config = _SPEC
    strategy_name: Literal["LEAST_CONFIDENCE"] = Field("LEAST_CONFIDENCE", alias="strategy-name")
    threshold: _Fraction = Field(description="Keep when max(p) < threshold; in [0, 1].")


class Margin(BaseModel):
    """Keep a sample when its two highest scores are closer than ``threshold``."""

    model_config = _SPEC
    strategy_name: Literal["MARGIN"] = Field("MARGIN", alias="strategy-name")
    threshold: _Fraction = Field(description="Keep when top1 - top2 < threshold; in [0, 1].")


class Entropy(BaseModel):
    """Keep a sample when the entropy (nats) of its normalised scores is above ``threshold``."""

    model_config = _SPEC
    strategy_name: Literal["ENTROPY"] = Field("ENTROPY", alias="strategy-name")
    threshold: float = Field(ge=0, strict=True, allow_inf_nan=False,
                             description="Keep when entropy > threshold; at least 0.")


SamplingStrategy = Annotated[
    Union[RandomSampling, LeastConfidence, Margin, Entropy],
    Field(discriminator="strategy_name"),
]


class FeedbackConfig(BaseModel):
    """One entry of ``FeedbackConfigurationMap``: where samples go and which are kept."""

    model_config = _SPEC
    s3_bucket_name: str = Field(alias="s3-bucket-name", pattern=BUCKET_NAME_PATTERN,
                                description="Bucket the samples are uploaded to.")
    content_type: str = Field(alias="content-type", min_length=1,
                              description="Content type of the uploaded objects, e.g. image/jpeg.")
    s3_prefix: str = Field("", alias="s3-prefix",
                           description="Key prefix: objects are <s3-prefix>/<uuid>.<file-ext>.")
    file_ext: str = Field("", alias="file-ext", pattern=r"^[A-Za-z0-9.\-_]*$",
                          description="Object key extension, e.g. jpg; empty: no extension.")
    sampling_strategy: SamplingStrategy | None = Field(
        None, alias="sampling-strategy", description="Absent: every sample is uploaded.")


# --- lis's own keys (the `feedback:` section) ------------------------------------


class StorageSpec(BaseModel):
    """Where "S3" is: an S3-compatible endpoint, or a local folder (``file:///...``)."""

    model_config = _SPEC
    s3_endpoint_url: str | None = Field(
        None, description="http(s):// endpoint for boto3, file:///folder for a local store; "
                          "absent: AWS's own S3 endpoint.")
    region: str | None = Field(None, description="Region for boto3; absent: boto3's default.")
    access_key_id: str | None = Field(None, description="Absent: boto3's credential chain.")
    secret_access_key: SecretStr | None = Field(None, description="Goes with access_key_id.")

    @model_validator(mode="after")
    def _check(self) -> StorageSpec:
        url = self.s3_endpoint_url
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https", "file"):
                raise ValueError(f"s3_endpoint_url {url!r} must start with http://, https:// "
                                 "or file:///")
            if parts.scheme == "file" and (parts.netloc or not parts.path.startswith("/")):
                raise ValueError(f"s3_endpoint_url {url!r}: a local store is file:///absolute/path")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together: "
                             "give both or neither")
        return self

    @property
    def local_root(self) -> Path | None:
        """The folder of a local store, or None for S3."""
        if self.s3_endpoint_url is None or not self.s3_endpoint_url.startswith("file:"):
            return None
        return Path(unquote(urlsplit(self.s3_endpoint_url).path))


class MqttTlsSpec(BaseModel):
    """TLS towards the broker: a CA to trust, and optionally a client certificate."""

    model_config = _SPEC
    ca_file: Path | None = Field(None, description="CA bundle; absent: the system's CAs.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM).")
    key_file: Path | None = Field(None, description="Client private key (PEM).")

    @model_validator(mode="after")
    def _check(self) -> MqttTlsSpec:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttSpec(BaseModel):
    """The MQTT broker that receives statuses, predictions and metrics."""

    model_config = _SPEC
    host: str = Field(DEFAULT_MQTT_HOST, min_length=1)
    port: int = Field(DEFAULT_MQTT_PORT, ge=1, le=65535)
    tls: MqttTlsSpec | None = Field(None, description="Absent: plain TCP.")
    client_id: str | None = Field(
        None, description="Absent: lis-feedback-<hostname>-<pid>. Must differ per node: a "
                          "broker disconnects the older of two clients with one id.")
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(DEFAULT_MQTT_KEEPALIVE_S, ge=5, le=65535)


class SpoolSpec(BaseModel):
    """The on-disk spool that holds accepted samples until they are uploaded and announced."""

    model_config = _SPEC
    directory: Path = Field(DEFAULT_SPOOL_DIRECTORY, description="One per node; ~ is expanded.")
    max_bytes: int = Field(DEFAULT_SPOOL_MAX_BYTES, gt=0,
                           description="New samples are refused (status fail) past this size.")


class FeedbackConnectorSpec(BaseModel):
    """Everything a feedback pipeline needs: the connector's configs and lis's own keys."""

    model_config = _SPEC
    configs: dict[str, FeedbackConfig] = Field(description="Feedback config id -> configuration.")
    request_limit: int | None = Field(
        None, ge=1, description="Samples accepted and not yet delivered, at most; None: no limit.")
    storage: StorageSpec = StorageSpec()
    mqtt: MqttSpec = MqttSpec()
    spool: SpoolSpec = SpoolSpec()
