"""lis's serving side: configuration, the app builder, the HTTP ingress, the client, the CLI.

Only the client is imported here, so ``import serve_app`` stays light (no Ray,
no model runtime) for machines that only call lis.
"""

from serve_app.client import (
    GreengrassDependencyException,
    GreengrassFeedbackException,
    GreengrassInferenceException,
    StreamingBody,
    client,
)

__all__ = [
    "GreengrassDependencyException",
    "GreengrassFeedbackException",
    "GreengrassInferenceException",
    "StreamingBody",
    "client",
]
