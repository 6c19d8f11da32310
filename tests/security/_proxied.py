"""Runs ``_proxied_lis.py`` (lis behind Ray Serve's real proxies) in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_TIMEOUT_S = 600


def classifier_services(folder: Path, model: Path, extra: str = "") -> Path:
    """A services file with one classifier service, ``imageClassification``."""
    services = folder / "services.yaml"
    services.write_text(f"""\
services:
  - LocalInferenceServiceName: imageClassification
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: {model}
    num_cpus: 0.5
{extra}""")
    return services


def run_proxied_lis(services: Path, hosts: list[str], **environment: str) -> dict[str, Any]:
    """What each ``Host`` got from a lis behind proxies (see ``_proxied_lis.py``)."""
    env = {**os.environ, **environment,
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE)])}
    run = subprocess.run([sys.executable, str(HERE / "_proxied_lis.py"), str(services), *hosts],
                         env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, run.stdout[-2000:] + run.stderr[-3000:]
    return json.loads(lines[-1])
