"""``lis validate``: check configuration files; every problem is reported at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from serve_app.config import load_config
from vocabulary.pipeline_specs import GREENGRASS_V2_TOPICS, FeedbackSink, PipelineSink


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG")


def _sink(sink: PipelineSink, algorithm: str) -> str:
    if isinstance(sink, FeedbackSink):
        return f"ML Feedback {sink.config_id}"
    return f"{sink.topic or GREENGRASS_V2_TOPICS[algorithm]} ({sink.format})"


def run(args: argparse.Namespace) -> int:
    config = load_config(args.configs)  # a ConfigError is printed by the dispatcher
    for spec in config.services:
        print(f"{spec.name}: {spec.algorithm} on {spec.platform} "
              f"(connector {spec.connector_id}, model {spec.model_source})")
    if config.feedback is not None:
        print(f"ML Feedback: {len(config.feedback.configs)} configuration(s)")
    for pipeline in config.pipelines:
        every = f"every {pipeline.interval_s:g} s" if pipeline.interval_s else "as fast as it answers"
        sinks = ", ".join(_sink(sink, pipeline.algorithm) for sink in pipeline.sinks)
        print(f"pipeline {pipeline.name}: {pipeline.source.type} -> {pipeline.service}, "
              f"{every} -> {sinks}")
    pipelines = f", {len(config.pipelines)} pipeline(s)" if config.pipelines else ""
    print(f"ok: {len(config.services)} service(s){pipelines}")
    return 0
