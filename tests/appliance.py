"""The real appliance as a subprocess, for system tests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.mqtt import Mosquitto, Subscriber, free_port


class ApplianceProcess:
    """`scanside run` on tmp folders, pointed at a test broker and a test zoo."""

    def __init__(self, root: Path, broker_url: str, zoo: Path, appliance_id: str = "test",
                 keepalive_s: int = 2, extra: str = "", ingest: str = ""):
        """`ingest`: more lines for the [ingest] table; `extra`: more tables."""
        self.root, self.broker_url = root, broker_url
        self.inbox, self.state = root / "inbox", root / "state"
        self.prefix = f"scanside/{appliance_id}"
        self.config = root / "scanside.toml"
        self.config.write_text(f"""[appliance]
id = "{appliance_id}"
[ingest]
stable_s = 0.2
rescan_s = 1.0
workers = 2
{ingest}
[series.quiet_s]
PT = 2.0
CT = 2.0
MR = 2.0
[mqtt]
keepalive_s = {keepalive_s}
[models]
zoo = "{zoo}"
threads = 1
{extra}""")
        self.log = root / "appliance.log"
        self.process: subprocess.Popen | None = None
        self.web_port = free_port()

    def start(self, env: dict | None = None) -> ApplianceProcess:
        """`env`: extra environment variables (NOTIFY_SOCKET, WATCHDOG_USEC...)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(self.config),
             "--inbox", str(self.inbox), "--state-dir", str(self.state),
             "--broker", self.broker_url, "--topic-prefix", self.prefix,
             "--listen", f"127.0.0.1:{self.web_port}"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        return self

    def terminate(self, timeout: float = 90) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text()


def watch(broker: Mosquitto, app: ApplianceProcess) -> Subscriber:
    """A subscriber to everything the appliance publishes, once it reports online."""
    subscriber = Subscriber(broker.port, f"{app.prefix}/#")
    subscriber.wait_for(lambda s: any(p["state"] == "online" for p in s.on("/status")), 60)
    return subscriber


def truth_uid(folder) -> str:
    return json.loads((folder / "truth.json").read_text())["series_uid"]


def digests(folder) -> dict:
    """sha256 of every file under `folder`, by path relative to it."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
