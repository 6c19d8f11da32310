"""The one exception hierarchy of lis.

Every error lis raises on purpose is a ``LisError``. Each class carries the HTTP
status the ingress answers with (mapped in exactly one place,
``serve_app.ingress``) and the SDK exception the client raises (mapped in
exactly one place, ``serve_app.client``). Messages are built from structured
arguments so they always name the offending parameter and value.

This module is a leaf: it imports nothing from lis, so every layer (config,
ingress, deployments, runtimes, the model toolchain) can raise these errors.

    LisError                         500
    ├── ConfigError                  invalid configuration (all problems at once)
    ├── ArtifactError                a model artifact is missing, malformed or unsafe
    │   └── UnsafeArchive            an archive entry would escape its destination
    ├── CompileError                 `lis compile` failed
    ├── RequestError                 400  the caller sent something wrong
    │   ├── InvalidArgument          400
    │   ├── InvalidImage             400
    │   ├── MisdirectedRequest       421  a Host header not naming loopback, on loopback
    │   ├── PayloadTooLarge          413
    │   └── UnsupportedMediaType     415
    ├── ServiceNotFound              404  (SDK: dependency error)
    ├── AlgorithmMismatch            409  (SDK: dependency error)
    ├── Unauthorized                 401
    ├── ServiceUnavailable           503  not ready or overloaded (SDK: dependency error)
    ├── ClientClosedRequest          499  the caller hung up while its request waited
    ├── SpoolFull                    507  the ML Feedback spool has no room for a sample
    ├── InferenceTimeout             504
    └── InferenceFailed              500  the model runtime failed
        └── MemoryLimitExceeded      500  the replica passed its memory limit
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

__all__ = [
    "AlgorithmMismatch",
    "ArtifactError",
    "ClientClosedRequest",
    "CompileError",
    "ConfigError",
    "ConfigIssue",
    "InferenceFailed",
    "InferenceTimeout",
    "InvalidArgument",
    "InvalidImage",
    "LisError",
    "MemoryLimitExceeded",
    "MisdirectedRequest",
    "PayloadTooLarge",
    "RequestError",
    "ServiceNotFound",
    "ServiceUnavailable",
    "SpoolFull",
    "Unauthorized",
    "UnsafeArchive",
    "UnsupportedMediaType",
    "from_wire",
]


class LisError(Exception):
    """Root of every error lis raises on purpose."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Ray replicas -> ingress). Rebuild
        # them from the final message so subclasses with structured
        # constructors still unpickle.
        return (_rebuild, (type(self), self.message, self.__dict__))

    @property
    def type_name(self) -> str:
        return type(self).__name__


def _rebuild(cls: type[LisError], message: str, state: dict[str, Any]) -> LisError:
    error = cls.__new__(cls)
    LisError.__init__(error, message)
    error.__dict__.update(state)
    return error


def from_wire(type_name: str, message: str) -> LisError:
    """Rebuild an error sent as ``{"type", "message"}`` (the HTTP error body)."""
    cls = globals().get(type_name)
    if not (isinstance(cls, type) and issubclass(cls, LisError)):
        cls = LisError
    return _rebuild(cls, message, {})


class ConfigIssue:
    """One problem in a configuration: where it is, which parameter, what is wrong."""

    def __init__(self, where: str, parameter: str | None, problem: str) -> None:
        self.where = where
        self.parameter = parameter
        self.problem = problem

    def __str__(self) -> str:
        if self.parameter:
            return f"{self.where}: {self.parameter}: {self.problem}"
        return f"{self.where}: {self.problem}"

    def __repr__(self) -> str:
        return f"ConfigIssue({str(self)!r})"


class ConfigError(LisError):
    """A configuration is invalid. Carries every problem found, not just the first."""

    def __init__(self, source: str, issues: Sequence[ConfigIssue]) -> None:
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s):\n{lines}")
        self.source = source
        self.issues = list(issues)


class ArtifactError(LisError):
    """A model artifact is missing, malformed, or not what its format requires."""

    def __init__(self, artifact: str, problem: str) -> None:
        super().__init__(f"model artifact {artifact}: {problem}")
        self.artifact = artifact
        self.problem = problem


class UnsafeArchive(ArtifactError):
    """An archive would write outside its destination, or is too large."""


class CompileError(LisError):
    """`lis compile` could not produce or verify an artifact."""


class RequestError(LisError):
    status = HTTPStatus.BAD_REQUEST


class InvalidArgument(RequestError):
    def __init__(self, parameter: str, value: object, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid {parameter} {shown}: expected {expected}")
        self.parameter = parameter


class InvalidImage(RequestError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid image: {reason}")


class MisdirectedRequest(RequestError):
    """A request to a loopback-only lis naming another host: a web page's DNS rebinding."""

    status = HTTPStatus.MISDIRECTED_REQUEST

    def __init__(self, host: str) -> None:
        super().__init__(f"this lis listens on loopback only and answers requests for "
                         f"localhost, 127.x.x.x or [::1], not Host {host[:100]!r}")
        self.host = host


class PayloadTooLarge(RequestError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, what: str, size: int, limit: int, limit_name: str | None = None) -> None:
        named = f" ({limit_name})" if limit_name else ""
        super().__init__(f"{what} {size} is over the limit of {limit}{named}")


class UnsupportedMediaType(RequestError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE

    def __init__(self, content_type: str, supported: Sequence[str]) -> None:
        super().__init__(
            f"unsupported content type {content_type!r}: expected one of {', '.join(supported)}"
        )


class ServiceNotFound(LisError):
    status = HTTPStatus.NOT_FOUND

    def __init__(self, service: str) -> None:
        super().__init__(f"no inference service named {service!r}")
        self.service = service


class AlgorithmMismatch(LisError):
    status = HTTPStatus.CONFLICT

    def __init__(self, service: str, requested: str, actual: str) -> None:
        super().__init__(
            f"service {service!r} runs {actual!r}, not the requested AlgoType {requested!r}"
        )


class Unauthorized(LisError):
    status = HTTPStatus.UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token")


class ServiceUnavailable(LisError):
    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"service {service!r} is unavailable: {reason}")


class ClientClosedRequest(LisError):
    # nginx's code for it: no HTTP status names a request whose caller left.
    # Nobody reads the answer; it shows in /metrics and the access lines.
    status = 499

    def __init__(self, service: str) -> None:
        super().__init__(f"the caller hung up while its request for {service!r} was queued; "
                         f"it was dropped before it reached a replica")


class SpoolFull(LisError):
    """A new ML Feedback sample would pass the spool's size cap; it is refused, nothing dropped."""

    status = HTTPStatus.INSUFFICIENT_STORAGE

    def __init__(self, size: int, used: int, limit: int) -> None:
        super().__init__(f"feedback spool is full: a sample of {size} bytes does not fit "
                         f"({used} of {limit} bytes used, waiting for upload)")


class InferenceTimeout(LisError):
    status = HTTPStatus.GATEWAY_TIMEOUT

    def __init__(self, service: str, seconds: float) -> None:
        super().__init__(f"service {service!r} did not answer within {seconds:g} s")


class InferenceFailed(LisError):
    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"service {service!r} failed: {reason}")


class MemoryLimitExceeded(InferenceFailed):
    def __init__(self, service: str, rss_kb: int, limit_kb: int) -> None:
        super().__init__(
            service,
            f"replica memory {rss_kb} KB passed LocalInferenceServiceMemoryLimitKB "
            f"{limit_kb} KB; the replica is being replaced",
        )
