"""Loading and running a DLR model makes no connection off this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from deployments._dlr import phone_home_config_path

# Runs in a fresh interpreter so that dlr is imported for the first time
# under the audit hook. Every socket connect / name lookup is recorded;
# loopback and Unix sockets are fine.
_PROBE = r"""
import ipaddress, json, socket, sys, threading

attempts = []

def _off_machine(host):
    if isinstance(host, (bytes, bytearray)):
        host = host.decode(errors="replace")
    if not isinstance(host, str) or host in ("", "localhost"):
        return False
    try:
        return not ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return True  # a host name: resolving it is already reaching out

def hook(event, args):
    if event == "socket.getaddrinfo" and _off_machine(args[0]):
        attempts.append([event, repr(args[0])])
    elif event == "socket.connect":
        sock, address = args
        if sock.family != socket.AF_UNIX and _off_machine(address[0]):
            attempts.append([event, repr(address)])

sys.addaudithook(hook)

import numpy as np
from deployments.dlr_runtime import DLRRuntime

runtime = DLRRuntime(sys.argv[1])
runtime.load()
outputs = runtime.predict(np.zeros(runtime.input_shape, np.float32))
# Whatever DLR started in the background (a phone-home sender) has finished:
# its connection attempts, if any, are in ``attempts``.
for thread in threading.enumerate():
    if thread is not threading.main_thread():
        thread.join(30)
print(json.dumps({"attempts": attempts, "output_shape": list(outputs[0].shape),
                  "dlr_loaded": "dlr" in sys.modules}))
"""


def _probe(artifact: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(artifact)],
                          capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_probe_sees_an_outbound_connection() -> None:
    # The hook must be able to fail: an attempt to reach a public address is seen.
    code = _PROBE.split("sys.addaudithook(hook)")[0] + (
        "sys.addaudithook(hook)\n"
        "s = socket.socket(); s.setblocking(False)\n"
        "try: s.connect(('192.0.2.1', 443))\n"
        "except OSError: pass\n"
        "print(json.dumps(attempts))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "192.0.2.1" in done.stdout


def test_dlr_model_runs_without_outbound_connections(tiny_neo_artifact: Path) -> None:
    result = _probe(tiny_neo_artifact)
    assert result["dlr_loaded"] is True
    assert result["output_shape"] == [1, 3]
    assert result["attempts"] == []


def test_dlr_phone_home_is_switched_off_in_its_config(tiny_neo_artifact: Path) -> None:
    _probe(tiny_neo_artifact)
    config = json.loads(phone_home_config_path().read_text())
    assert config["enable_phone_home"] is False
