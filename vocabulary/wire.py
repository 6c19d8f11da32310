"""What crosses between the ingress (or an in-cluster client) and a service replica.

Both sides import these from here, so a replica and an ingress of the same lis
always agree on the shape of an answer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InferenceResult", "StageTimes"]

# (stage, seconds) of a replica's steps for one request: prepare, wait, model.
StageTimes = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class InferenceResult:
    """What a service returns: the connector's answer, and where the replica's time went."""

    body: str
    content_type: str
    # (stage, seconds) of the replica's steps, for the ingress's /metrics; a
    # tuple so that the default is a class attribute, which also fills it in
    # for a result pickled by a replica of an older lis.
    stages_s: StageTimes = ()
