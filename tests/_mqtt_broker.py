"""A real MQTT broker (amqtt) for the feedback tests, run as its own process.

    python _mqtt_broker.py PORT RECORD_FILE

It listens on 127.0.0.1:PORT and appends every PUBLISH it receives to
RECORD_FILE as a JSON line ``{"client_id", "topic", "dup", "payload"}``. Tests read
what the broker got from that file instead of racing a subscriber against a
broker restart: the file outlives the broker, so a test can stop and restart
it and still see every message.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

from amqtt.broker import Broker
from amqtt.mqtt.publish import PublishPacket
from amqtt.plugins.base import BasePlugin


class RecorderPlugin(BasePlugin):  # type: ignore[type-arg]
    """Appends each PUBLISH packet the broker receives to a file, before it is acknowledged.

    amqtt runs this hook's task before the task that answers the PUBLISH with
    PUBACK, and the hook never yields: a message a client saw acknowledged is
    in the file even if the broker is killed right after.
    """

    @dataclass
    class Config:
        path: str = ""

    async def on_mqtt_packet_received(self, *, packet: object, session: object = None) -> None:
        if not isinstance(packet, PublishPacket) or packet.data is None:
            return
        line = {"client_id": getattr(session, "client_id", None), "topic": packet.topic_name,
                "dup": packet.dup_flag, "payload": bytes(packet.data).decode()}
        with open(self.config.path, "a") as stream:
            stream.write(json.dumps(line) + "\n")


def _config(port: int, record_path: str) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "_mqtt_broker.RecorderPlugin": {"path": record_path},
        },
    }


async def _serve(port: int, record_path: str) -> None:
    broker = Broker(_config(port, record_path))
    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2]))
