"""What the system tests share: a real Mosquitto and the real appliance process."""

from __future__ import annotations

import pytest

from tests.appliance import ApplianceProcess
from tests.mqtt import Mosquitto


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(tmp_path).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def appliance(tmp_path, broker, tiny_zoo):
    """Makes `scanside run` processes on tmp folders; kills any left running."""
    made = []

    def make(root=tmp_path, **options) -> ApplianceProcess:
        root.mkdir(parents=True, exist_ok=True)
        process = ApplianceProcess(root, broker.url, tiny_zoo, **options)
        made.append(process)
        return process

    yield make
    for process in made:
        if process.process and process.process.poll() is None:
            process.kill()
