"""Deploy one pinned service on a Ray of its own and print what lis reports; for
``test_attack_model_pinning.py``, which runs it in a child process so its Ray is
nobody else's. Prints ``RUNNING`` or ``FAILED <lis's error>``.

    python _pinned_service.py SERVICES_YAML
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from cluster.ray_start import connect_ray
from serve_app.config import load_config
from serve_app.deploy import deploy, wait_for_services
from vocabulary.errors import LisError


def main(services: Path) -> None:
    import ray
    from ray import serve

    config = load_config([services])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connect_ray(None, num_cpus=2, http_port=port)
    try:
        deploy(config, port=port)
        try:
            states = wait_for_services(config, timeout_s=240)
            print(" ".join(state["state"] for state in states.values()), flush=True)
        except LisError as error:
            print(f"FAILED {error}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
