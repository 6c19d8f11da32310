"""Issue #17: a body over the limit got a TCP reset instead of the 413 it was sent.

On the code before this change the ingress answered 413 as soon as it saw the
declared length (or the running count) pass the limit, without reading the
rest. When the server then closes the connection (the client sent
``Connection: close``, or the server's keep-alive ends) with unread data, the
kernel resets it and ``http.client`` (the SDK's own transport), still
sending, raised ``ConnectionResetError: [Errno 104] Connection reset by peer``
instead of reading the answer. Here lis's own HTTP server
(``serve_app._http_server``, as on one box) serves the real app and a client
sends 64 MiB to a service whose limit is 1 MiB.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from _security_fakes import MAX_BODY, SERVICE, FakeRouter, serving

BODY_BYTES = 64 * 1024 * 1024  # vocabulary.limits.MAX_DRAINED_BODY_BYTES: all of it is read
CHUNK = 1024 * 1024


def _post(port: int, body: bytes | Iterator[bytes], chunked: bool,
          close: bool) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "image/jpeg", **({"Connection": "close"} if close else {})}
    try:
        connection.request("POST", f"/inference/{SERVICE}", body=body, headers=headers,
                           encode_chunked=chunked)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def _chunks() -> Iterator[bytes]:
    for _ in range(BODY_BYTES // CHUNK):
        yield bytes(CHUNK)


@pytest.mark.parametrize(("chunked", "close"), [(False, True), (True, True), (False, False)],
                         ids=["content-length, close", "chunked, close",
                              "content-length, keep-alive"])
def test_a_64_mib_body_reads_its_413_not_a_reset(chunked: bool, close: bool) -> None:
    """Old code, seen: ``ConnectionResetError: [Errno 104] Connection reset by peer`` from
    ``http.client`` in both ``Connection: close`` cases. On keep-alive uvicorn itself read
    and dropped the rest, so that case passed before (it guards the drain's byte count)."""
    router = FakeRouter()
    with serving(router) as port:
        status, error = _post(port, _chunks() if chunked else bytes(BODY_BYTES), chunked, close)
        assert (status, error) == (413, {"error": {
            "type": "PayloadTooLarge",
            "message": f"request body bytes {BODY_BYTES} is over the limit of {MAX_BODY}"}})
        # The server still answers, on a new connection.
        assert _post(port, b"frame", False, False)[0] == 200
    assert router.bodies == [b"frame"]
