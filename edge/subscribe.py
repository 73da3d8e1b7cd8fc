"""`scanside subscribe`: print alerts, results and status as they arrive (demos, checks)."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt

from edge.delivery.publisher import parse_broker_url


def summarise(topic: str, payload: dict) -> str:
    kind = topic.rsplit("/", 1)[-1]
    if kind == "status":
        return f"status  {payload.get('state')}  {payload.get('detail', '')}"
    lesions = ", ".join(f"{f['diameter_mm']:.0f} mm p={f['probability']:.2f}"
                        for f in payload.get("findings", []))
    if kind == "alerts":
        return (f"ALERT   {payload['kind']:<11} {payload['modality']} {payload['series_uid']} "
                f"v{payload['version']}  {lesions}")
    return (f"result  {payload['status']:<8}    {payload['modality']} {payload['series_uid']} "
            f"v{payload['version']}  {lesions or payload.get('reason') or ''}")


def subscribe(broker: str, prefix: str, count: int | None, as_json: bool) -> int:
    address = parse_broker_url(broker)
    seen, done = 0, threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(client, userdata, message):
        nonlocal seen
        payload = json.loads(message.payload)
        print(json.dumps({"topic": message.topic, **payload}) if as_json
              else summarise(message.topic, payload), flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
    client.on_message = on_message
    if address.tls:
        client.tls_set()
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    done.wait()                     # Ctrl-C ends it (the CLI exits 130)
    client.loop_stop()
    client.disconnect()
    return 0

