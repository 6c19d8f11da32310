"""lis deployed behind Ray Serve's proxies (the cluster path) on a Ray of its own, on
127.0.0.1; for ``test_attack_dns_rebinding.py`` and ``test_attack_plaintext_ingress.py``,
which run it in a child process so its Ray is nobody else's. Prints one JSON line: the
status and error type each ``Host`` got; with ``LIS_CA_FILE`` set, over HTTPS checked
against that CA, and under ``"plain http"`` what a plain-HTTP request got.

    python _proxied_lis.py SERVICES_YAML HOST_HEADER...
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
from pathlib import Path

from cluster.ray_start import connect_ray
from serve_app.config import load_config
from serve_app.deploy import deploy, wait_for_services


def _get(port: int, host: str, *, https: bool) -> list[object]:
    connection = (http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=60,
        context=ssl.create_default_context(cafile=os.environ["LIS_CA_FILE"])) if https
        else http.client.HTTPConnection("127.0.0.1", port, timeout=60))
    try:
        connection.request("GET", "/services", headers={"Host": host})
        answer = connection.getresponse()
        body = json.loads(answer.read())
        return [answer.status, body.get("error", {}).get("type")]
    finally:
        connection.close()


def main(services: Path, hosts: list[str]) -> None:
    import ray
    from ray import serve

    config = load_config([services])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connect_ray(None, num_cpus=2)  # no http_port: Ray Serve's proxies serve HTTP
    try:
        deploy(config, host="127.0.0.1", port=port)
        wait_for_services(config, timeout_s=240)
        https = "LIS_CA_FILE" in os.environ
        seen: dict[str, object] = {host: _get(port, host, https=https) for host in hosts}
        if https:
            try:
                seen["plain http"] = _get(port, "127.0.0.1", https=False)
            except (OSError, http.client.HTTPException) as error:
                seen["plain http"] = type(error).__name__
        print(json.dumps(seen), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
