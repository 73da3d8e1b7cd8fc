"""The embedded MQTT broker for `make run` and demos: amqtt on localhost, in a thread.

With no broker configured the appliance starts one, so it works on a fresh machine; a
hospital points the appliance at Mosquitto (see systemd/mosquitto.conf) instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from edge.errors import DeliveryError

log = logging.getLogger("scanside.broker")


class EmbeddedBroker:
    """An anonymous MQTT 3.1.1 broker bound to `host:port`, for this machine only."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883):
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        ready, failure = threading.Event(), []
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name="embedded-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or failure:
            raise DeliveryError(f"the embedded MQTT broker could not listen on "
                                f"{self.host}:{self.port}: {failure[0] if failure else 'timeout'}")
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    def _run(self, ready: threading.Event, failure: list) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                              {"allow_anonymous": True}}}
        try:
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except Exception as error:  # amqtt raises its own types for a busy port, etc.
            failure.append(error)
            ready.set()
            return
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            future.result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
