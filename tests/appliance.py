"""The real appliance as a subprocess, for system tests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mqtt import Mosquitto, Subscriber

STATUS_PAGE = re.compile(rb"status page on http://127\.0\.0\.1:(\d+)/")


class ApplianceProcess:
    """`scanside run` on tmp folders, pointed at a test broker and a test zoo."""

    def __init__(self, root: Path, broker_url: str, zoo: Path, appliance_id: str = "test",
                 keepalive_s: int = 2, extra: str = "", ingest: str = "",
                 listen: str = "127.0.0.1:0"):
        """`ingest`: more lines for the [ingest] table; `extra`: more tables; `listen`: the
        status page's address (by default any free port, which `web_port` reads back)."""
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
        self.listen, self._log_from = listen, 0

    def start(self, env: dict | None = None) -> ApplianceProcess:
        """`env`: extra environment variables (NOTIFY_SOCKET, WATCHDOG_USEC...)."""
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(self.config),
             "--inbox", str(self.inbox), "--state-dir", str(self.state),
             "--broker", self.broker_url, "--topic-prefix", self.prefix,
             "--listen", self.listen],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        return self

    @property
    def web_port(self) -> int:
        """The status page's port, as this run logged it once bound. The appliance binds
        port 0 itself: a port picked free here could be taken by another process (an
        outgoing connection's) before the appliance got to bind it."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self.log.open("rb") as log:
                log.seek(self._log_from)
                found = STATUS_PAGE.findall(log.read())
            if found:
                return int(found[-1])
            if self.process.poll() is not None:
                raise AssertionError(f"the appliance stopped without a status page:\n"
                                     f"{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"no status page logged in 60 s:\n{self.output()}")

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
