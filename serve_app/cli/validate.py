"""``lis validate``: check configuration files; every problem is reported at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from serve_app.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.configs)  # a ConfigError is printed by the dispatcher
    for spec in config.services:
        print(f"{spec.name}: {spec.algorithm} on {spec.platform} "
              f"(connector {spec.connector_id}, model {spec.model_source})")
    if config.feedback is not None:
        print(f"ML Feedback: {len(config.feedback.configs)} configuration(s)")
    print(f"ok: {len(config.services)} service(s)")
    return 0
