"""Names lis gives things, each defined once: Ray Serve names, network defaults,
environment variables, folders and artifact file names.

A name that two processes must agree on (the ingress and a replica, ``lis up``
and the SDK, ``lis compile`` and the runtime that loads its output) lives here,
so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "APP_NAME",
    "AUXILIARY_JSON_FILES",
    "CACHE_DIR_ENV",
    "CAMERA_NAME_PATTERN",
    "CAMERA_RESOURCE_PREFIX",
    "CA_FILE_ENV",
    "CLUSTER_TOKEN_FILE",
    "COMPILE_INFO_FILE",
    "CONFIG_DIR",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_ENDPOINT",
    "DEFAULT_HTTP_HOST",
    "DEFAULT_HTTP_PORT",
    "ENDPOINT_ENV",
    "FAKE_GPU_SUPPORT_ENV",
    "FEEDBACK_DEPLOYMENT",
    "GRAPH_EXECUTOR",
    "GRAPH_FILE",
    "HTTP_TOKEN_FILE",
    "INGRESS_DEPLOYMENT",
    "LABELS_FILE",
    "LIBDLR_FILE",
    "LOCAL_RAY_TOKEN_FILE",
    "LIBRARY_FILE",
    "PARAMS_FILE",
    "PLATFORM_RESOURCE_PREFIX",
    "PREPROCESSING_FILE",
    "RAY_NAMESPACE",
    "SHAPES_FILE",
    "SYMBOL_PREFIX",
    "TOKEN_ENV",
    "TRANSPORT_ENV",
    "VM_CODE_FILE",
    "VM_EXECUTOR",
    "camera_resource",
    "platform_resource",
]

# --- Ray Serve -----------------------------------------------------------------------

APP_NAME = "lis"  # the one Ray Serve application holding every service
RAY_NAMESPACE = "lis"
INGRESS_DEPLOYMENT = "LisIngress"
FEEDBACK_DEPLOYMENT = "FeedbackWorker"
# A replica asks for a sliver of this custom resource, so it lands on a node of its
# connector's platform (``connector-platform:Aarch64JTX2`` on a Jetson).
PLATFORM_RESOURCE_PREFIX = "connector-platform:"


def platform_resource(platform: str) -> str:
    """The Ray custom resource a node offers for the connector platform ``platform``."""
    return f"{PLATFORM_RESOURCE_PREFIX}{platform}"


# A node with a camera advertises ``camera:<name>`` (``lis node --camera NAME``); a
# pipeline whose ``camera`` is that name runs there, where the device is.
CAMERA_RESOURCE_PREFIX = "camera:"
CAMERA_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


def camera_resource(camera: str) -> str:
    """The Ray custom resource a node offers for the camera it has named ``camera``."""
    return f"{CAMERA_RESOURCE_PREFIX}{camera}"


# --- the network -----------------------------------------------------------------------

DEFAULT_HTTP_HOST = "127.0.0.1"  # exposing lis on the network is an explicit choice
DEFAULT_HTTP_PORT = 8000
DEFAULT_ENDPOINT = f"http://{DEFAULT_HTTP_HOST}:{DEFAULT_HTTP_PORT}"

# --- environment variables ------------------------------------------------------------

TOKEN_ENV = "LIS_TOKEN"  # the bearer token (server: default source; clients: sent)
ENDPOINT_ENV = "LIS_ENDPOINT"  # where HTTP clients find lis
CA_FILE_ENV = "LIS_CA_FILE"  # the CA (PEM) an https:// LIS_ENDPOINT's certificate is checked against
TRANSPORT_ENV = "LIS_TRANSPORT"  # the SDK's transport: auto, http or handle
CACHE_DIR_ENV = "LIS_CACHE_DIR"  # lis's cache root (fetched models, extracted artifacts)
# Tests only: pretend the runtime was built with GPU support (no Jetson in CI).
FAKE_GPU_SUPPORT_ENV = "LIS_FAKE_GPU_SUPPORT"

# --- folders ---------------------------------------------------------------------------

DEFAULT_CACHE_DIR = Path("~/.cache/lis")  # $LIS_CACHE_DIR overrides it
CONFIG_DIR = Path("~/.config/lis")
HTTP_TOKEN_FILE = CONFIG_DIR / "http-token"
CLUSTER_TOKEN_FILE = CONFIG_DIR / "cluster-token"
# The token of the Ray that `lis up` starts for one box (cluster/_token.py).
LOCAL_RAY_TOKEN_FILE = CONFIG_DIR / "local-ray-token"

# --- artifact files --------------------------------------------------------------------

LABELS_FILE = "labels.txt"  # lis: class names, one per line, line i names class i
PREPROCESSING_FILE = "preprocessing.json"  # lis: how images become the model's input
# SageMaker image classification (MXNet): <prefix>-symbol.json, <prefix>-NNNN.params.
SYMBOL_PREFIX = "image-classification"
SHAPES_FILE = "model-shapes.json"
# Neo / DLR
LIBRARY_FILE = "compiled.so"
PARAMS_FILE = "compiled.params"
GRAPH_FILE = "compiled_model.json"
LIBDLR_FILE = "libdlr.so"  # a DLR runtime shipped inside the artifact
# lis compile, for a model with data-dependent output shapes (NonMaxSuppression):
# TVM's Relay VM bytecode beside compiled.so, instead of the params and graph.
VM_CODE_FILE = "compiled.ro"
COMPILE_INFO_FILE = "lis-compile.json"  # lis: how `lis compile` built it
# Its "executor": what runs the artifact, a graph executor (DLR, or TVM's) or TVM's Relay VM.
GRAPH_EXECUTOR = "graph"
VM_EXECUTOR = "vm"
# JSON files in a Neo artifact that are not the graph: DLR's own list plus lis's.
AUXILIARY_JSON_FILES = frozenset({
    SHAPES_FILE, "hyperparams.json", "version.json",
    PREPROCESSING_FILE, COMPILE_INFO_FILE, "labels.json",
})
