"""The HTTP ingress: one Starlette app in front of every inference service.

Routes (see docs/http-api.md):

    POST /inference/{service_name}   image body -> the connector's output
    POST /feedback/{config_id}       a sample for ML Feedback
    GET  /services                   name, algorithm, ARN, platform, replicas, state
    GET  /pipelines                  each pipeline's state, frames and results counted
    GET  /healthz                    the ingress is up
    GET  /readyz                     200 only when every service is running
    GET  /metrics                    answers, in flight, latencies, replica steps (Prometheus)
    /v2/...                          the Open Inference Protocol (``serve_app.open_inference``)

The app talks to a ``Router``: ``HandleRouter`` reaches the services through
Ray Serve handles; tests can hand in any other router to exercise the HTTP
layer in-process. ``LisError`` is mapped to an HTTP answer here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from serve_app._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serve_app._metrics import UNKNOWN_SERVICE, RequestMetrics, pipeline_metrics
from serve_app.open_inference import open_inference_routes
from vocabulary.errors import (
    AlgorithmMismatch,
    ClientClosedRequest,
    InvalidArgument,
    LisError,
    MisdirectedRequest,
    PayloadTooLarge,
    ServiceNotFound,
    Unauthorized,
)
from vocabulary.limits import MAX_DRAINED_BODY_BYTES, MAX_FEEDBACK_BODY_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from serve_app._local import Gone
    from vocabulary.wire import InferenceResult, StageTimes

__all__ = ["LoopbackHostGuard", "Router", "ServiceInfo", "build_http_app", "error_response"]

log = logging.getLogger("lis.ingress")

# Liveness says nothing but "up": load balancers and orchestrators ask without a token.
_UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/v2/health/live"})


@dataclass(frozen=True)
class ServiceInfo:
    """What the ingress knows of a service without asking its replicas."""

    name: str
    algorithm: str
    connector_id: str
    connector_arn: str
    platform: str
    timeout_s: float
    max_request_bytes: int
    feedback_config_id: str | None = None


class Router(Protocol):
    """Where the ingress sends requests; one implementation per transport."""

    services: dict[str, ServiceInfo]

    async def infer(self, service: ServiceInfo, body: bytes, content_type: str | None,
                    algo_type: str | None, gone: Gone | None = None) -> InferenceResult:
        """The service's answer; ``gone()`` tells whether the caller has hung up."""

    async def service_states(self) -> dict[str, dict[str, Any]]: ...

    async def publish_feedback(self, config_id: str, body: bytes,
                               prediction: Any, metadata: dict[str, str]) -> dict[str, Any]: ...

    async def pipeline_states(self) -> dict[str, dict[str, Any]]: ...


def error_response(error: LisError) -> JSONResponse:
    """The one mapping of lis errors to HTTP."""
    return JSONResponse({"error": {"type": error.type_name, "message": error.message}},
                        status_code=int(error.status))


def _lookup(router: Router, name: str, algo_type: str | None) -> ServiceInfo:
    service = router.services.get(name)
    if service is None:
        raise ServiceNotFound(name)
    if algo_type and algo_type != service.algorithm:
        raise AlgorithmMismatch(name, algo_type, service.algorithm)
    return service


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body; one over ``limit`` bytes is refused with 413.

    The rest of a refused body is read and dropped first (up to
    ``MAX_DRAINED_BODY_BYTES``): closing on a client still sending resets the
    connection, and the client (``http.client``, the SDK's transport) sees
    ``Connection reset by peer`` instead of the 413.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= MAX_DRAINED_BODY_BYTES:
            await _drain(request.stream(), MAX_DRAINED_BODY_BYTES)
        raise PayloadTooLarge("request body bytes", int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            size += await _drain(stream, MAX_DRAINED_BODY_BYTES - size)
            raise PayloadTooLarge("request body bytes", size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream: AsyncIterator[bytes], budget: int) -> int:
    """Read and drop what is left of ``stream``, stopping past ``budget`` bytes; bytes read."""
    read = 0
    with contextlib.suppress(ClientDisconnect):  # gone: the answer goes nowhere, no matter
        async for chunk in stream:
            read += len(chunk)
            if read > budget:
                break
    return read


def _names_loopback(host_header: str) -> bool:
    """Whether a ``Host`` header names loopback: localhost, 127.x.x.x or [::1], any port."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_http_app(router: Router, *, token: str | None = None) -> Starlette:
    """The Starlette app; with ``token`` every route but /healthz needs ``Bearer <token>``."""

    metrics = RequestMetrics()

    async def observed(name: str, work: Callable[[], Awaitable[InferenceResult]]
                       ) -> InferenceResult:
        """``work()``'s answer, counted in /metrics under the service ``name``."""
        started = time.perf_counter()
        label = name if name in router.services else UNKNOWN_SERVICE
        metrics.started(label)
        status: int = HTTPStatus.INTERNAL_SERVER_ERROR
        stages_s: StageTimes = ()
        try:
            result = await work()
            status, stages_s = HTTPStatus.OK, result.stages_s
            return result
        except LisError as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            # Ray Serve's proxy (on a cluster) cancels a request whose client hung up.
            status = ClientClosedRequest.status
            raise
        finally:
            metrics.observe(label, int(status), time.perf_counter() - started, stages_s)

    async def infer(request: Request) -> Response:
        name = request.path_params["service_name"]

        async def work() -> InferenceResult:
            service = _lookup(router, name, request.headers.get("x-algo-type"))
            body = await _read_body(request, service.max_request_bytes)
            return await router.infer(service, body, request.headers.get("content-type"),
                                      request.headers.get("x-algo-type"),
                                      request.is_disconnected)

        result = await observed(name, work)
        return Response(result.body, media_type=result.content_type)

    async def infer_tensors(service: ServiceInfo, body: bytes, content_type: str | None,
                            request: Request) -> InferenceResult:
        # The Open Inference Protocol's way in: same router, limits and metrics.
        return await observed(service.name, lambda: router.infer(
            service, body, content_type, None, request.is_disconnected))

    async def feedback(request: Request) -> Response:
        body = await _read_body(request, MAX_FEEDBACK_BODY_BYTES)
        prediction, metadata = _feedback_fields(request)
        status = await router.publish_feedback(request.path_params["config_id"], body,
                                               prediction, metadata)
        return JSONResponse(status)

    async def services(_: Request) -> Response:
        states = await router.service_states()
        listing = [{**asdict(info), **states.get(name, {})}
                   for name, info in sorted(router.services.items())]
        return JSONResponse({"services": listing})

    async def pipeline_states() -> dict[str, dict[str, Any]]:
        # A router made before pipelines (the tests' in-process fakes) has none.
        states = getattr(router, "pipeline_states", None)
        return await states() if states is not None else {}

    async def pipelines(_: Request) -> Response:
        states = await pipeline_states()
        return JSONResponse({"pipelines": [states[name] for name in sorted(states)]})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_text(_: Request) -> Response:
        text = metrics.render() + pipeline_metrics(await pipeline_states())
        return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)

    async def readyz(_: Request) -> Response:
        states = await router.service_states()
        waiting = sorted(name for name in router.services
                         if states.get(name, {}).get("state") != "RUNNING")
        if waiting:
            return JSONResponse({"status": "not ready", "waiting_for": waiting},
                                status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ready"})

    async def on_lis_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, LisError)
        return error_response(error)

    async def on_http_error(_: Request, error: Exception) -> Response:
        # Unknown routes and methods answer in the same JSON shape as lis errors.
        assert isinstance(error, HTTPException)
        phrase = HTTPStatus(error.status_code).phrase
        return JSONResponse({"error": {"type": phrase.replace(" ", ""), "message": error.detail}},
                            status_code=error.status_code)

    async def on_unexpected(_: Request, error: Exception) -> Response:
        log.exception("unexpected ingress failure")
        return error_response(LisError(f"internal error: {type(error).__name__}: {error}"))

    app = Starlette(
        routes=[
            Route("/inference/{service_name}", infer, methods=["POST"]),
            Route("/feedback/{config_id}", feedback, methods=["POST"]),
            Route("/services", services, methods=["GET"]),
            Route("/pipelines", pipelines, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
            *open_inference_routes(router.services, infer_tensors,
                                   lambda: router.service_states(), _read_body),
        ],
        exception_handlers={LisError: on_lis_error, HTTPException: on_http_error,
                            Exception: on_unexpected},
    )
    if token:
        app.add_middleware(_BearerTokenMiddleware, token=token)
    return app


def _feedback_fields(request: Request) -> tuple[Any, dict[str, str]]:
    """Prediction and metadata of ``POST /feedback``: JSON in two headers."""
    import json

    raw_prediction = request.headers.get("x-model-prediction")
    if raw_prediction is None:
        raise InvalidArgument("X-Model-Prediction header", None, "the model's prediction as JSON")
    try:
        prediction = json.loads(raw_prediction)
        metadata = json.loads(request.headers.get("x-metadata", "{}"))
    except ValueError as error:
        raise InvalidArgument("X-Model-Prediction/X-Metadata header", str(error),
                              "valid JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidArgument("X-Metadata header", metadata, "a JSON object")
    return prediction, {str(k): str(v) for k, v in metadata.items()}


class _BearerTokenMiddleware:
    """Requires ``Authorization: Bearer <token>`` (constant-time compare)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in _UNAUTHENTICATED_PATHS:
            headers = dict(scope.get("headers") or [])
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await error_response(Unauthorized())(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LoopbackHostGuard:
    """Answers 421 to a request whose ``Host`` header does not name loopback.

    For an app served on loopback only (``serve_app._http_server`` puts it
    around the ingress there): a web page can make its own name resolve to
    127.0.0.1 (DNS rebinding) and have the browser send requests to a local
    lis as same-origin ones; their ``Host`` is still the page's name. A
    request without a ``Host`` header (HTTP/1.0) comes from no browser and passes.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host")
            if host is not None and not _names_loopback(host.decode("latin-1")):
                error = MisdirectedRequest(host.decode("latin-1"))
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
