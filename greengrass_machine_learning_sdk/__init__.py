"""Drop-in for the AWS IoT Greengrass Machine Learning SDK 1.1.0, served by lis.

``import greengrass_machine_learning_sdk as ml`` keeps existing Lambda code
working unchanged; everything here is re-exported from ``serve_app.client``.
"""

from serve_app.client import (
    GreengrassDependencyException,
    GreengrassInferenceException,
    StreamingBody,
    client,
)

__all__ = [
    "GreengrassDependencyException",
    "GreengrassInferenceException",
    "StreamingBody",
    "client",
]
