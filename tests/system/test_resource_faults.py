"""Resource faults: the state directory fills up or turns read-only, the inbox runs out of
space. The appliance reports degraded (status topic and page) with the reason, accepts no
file it cannot record, loses nothing, and recovers by itself when the resource returns.

The inbox and state directory are small tmpfs or loop-mounted ext4 file systems made by
the test, so it needs root (as `make test` in CI has); elsewhere it is skipped with that
reason.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from edge.delivery.outbox import Outbox
from edge.simulator import play
from edge.state import DB_NAME
from tests.appliance import watch
from tests.factories import tiny_series
from tests.mqtt import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.broker, pytest.mark.slow]
MOUNT_MB = 24
FLOOR_MB = 4          # [health] min_free_mb in these tests


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the fault (needs root): {done.stderr.strip()}")


@pytest.fixture
def small_disks(tmp_path):
    """`tmp_path/app` with its inbox and state directory on their own small tmpfs."""
    root = tmp_path / "app"
    mounts = [root / "inbox", root / "state"]
    for mount in mounts:
        mount_tmpfs(mount, MOUNT_MB)
    yield root
    for mount in mounts:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system under `folder` to the last byte."""
    filler = folder / "filler.bin"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    return filler


def page_health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as reply:
        return json.loads(reply.read())["health"]


def wait_until_recorded_sent(state: Path, timeout: float = 30) -> None:
    """Wait until the outbox records every message as acknowledged. A subscriber can hold
    a result before the appliance has the broker's acknowledgement on disk; a fault in that
    window rightly sends the result again after the restart (at least once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with closing(sqlite3.connect(f"file:{state / DB_NAME}?mode=ro", uri=True)) as conn:
            if not Outbox(conn).backlog():
                return
        time.sleep(0.2)
    raise AssertionError(f"the outbox in {state} still holds unsent messages after {timeout} s")


def send(app, tmp_path, name: str) -> str:
    series = tiny_series(8, "PT")
    for _ in play(series.write(tmp_path / "source" / name), app.inbox, 40.0, name):
        pass
    return series.identity.series_uid


def degraded_then_recovered(app, subscriber, tmp_path, fault, repair, reason: str) -> None:
    """Common course: one series before the fault, one during, the fault repaired."""
    first = send(app, tmp_path, "before")
    subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")} == {first}, 60)
    fault()
    subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "degraded", 30)
    assert reason in subscriber.on("/status")[-1]["detail"]
    health = page_health(app.web_port)
    assert health["state"] == "degraded" and reason in health["detail"]
    second = send(app, tmp_path, "during")
    time.sleep(4)                                # well past the quiet period
    assert {r["series_uid"] for r in subscriber.on("/results")} == {first}
    assert app.process.poll() is None
    repair()
    subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "online", 30)
    subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")}
                        == {first, second}, 60)
    during = [r for r in subscriber.on("/results") if r["series_uid"] == second]
    assert len(during) == 1 and (during[0]["status"], during[0]["n_slices"]) == ("negative", 8)
    assert page_health(app.web_port)["state"] == "online"
    assert app.terminate() == 0


def test_a_full_state_directory_degrades_and_recovers(tmp_path, small_disks, broker,
                                                      appliance):
    app = appliance(small_disks, extra=f"[health]\nmin_free_mb = {FLOOR_MB}\n").start()
    subscriber = watch(broker, app)
    filler = []
    try:
        degraded_then_recovered(app, subscriber, tmp_path,
                                lambda: filler.append(fill(app.state)),
                                lambda: filler[0].unlink(), f"under {app.state}")
    finally:
        subscriber.close()


def test_a_state_directory_turned_read_only_degrades_and_resumes_after_repair(
        tmp_path, broker, appliance):
    """What ext4 does on an I/O error (errors=remount-ro): the state directory turns
    read-only under the running appliance. It must report it, accept nothing it cannot
    record, stop cleanly, and after the repair and a restart analyse what came meanwhile."""
    image, root = tmp_path / "state.img", tmp_path / "app"
    subprocess.run(["truncate", "-s", f"{4 * MOUNT_MB}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    state = root / "state"

    def mount() -> str:
        state.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image),
                               str(state)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot loop-mount an ext4 image (needs root): {done.stderr.strip()}")
        device = next(line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1] == str(state))
        return Path(device).name

    device = mount()
    app = appliance(root, extra=f"[health]\nmin_free_mb = {FLOOR_MB}\n").start()
    subscriber = watch(broker, app)
    try:
        first = send(app, tmp_path, "before")
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")} == {first},
                            60)
        wait_until_recorded_sent(state)
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("scanside test\n")
        second = send(app, tmp_path, "during")
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "degraded", 30)
        assert "cannot write the state directory" in subscriber.on("/status")[-1]["detail"]
        assert page_health(app.web_port)["state"] == "degraded"
        time.sleep(4)
        assert {r["series_uid"] for r in subscriber.on("/results")} == {first}
        assert app.process.poll() is None
        assert app.terminate() == 0
        subprocess.run(["umount", str(state)], check=True)
        subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)  # the repair
        mount()
        app.start()
        subscriber.wait_for(lambda s: {r["series_uid"] for r in s.on("/results")}
                            >= {first, second}, 60)
        time.sleep(2)
        results = subscriber.on("/results")
        assert sorted(r["series_uid"] for r in results) == sorted([first, second])
        assert [r["n_slices"] for r in results if r["series_uid"] == second] == [8]
        assert app.terminate() == 0
    finally:
        subscriber.close()
        if app.process.poll() is None:
            app.kill()
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_full_inbox_disk_is_reported_until_space_returns(tmp_path, small_disks, broker,
                                                           appliance):
    app = appliance(small_disks, extra=f"[health]\nmin_free_mb = {FLOOR_MB}\n").start()
    subscriber = watch(broker, app)
    try:
        filler = fill(app.inbox)
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "degraded", 30)
        assert f"MiB free under {app.inbox}" in subscriber.on("/status")[-1]["detail"]
        filler.unlink()
        subscriber.wait_for(lambda s: s.on("/status")[-1]["state"] == "online", 30)
        uid = send(app, tmp_path, "after")
        subscriber.wait_for(lambda s: [r["series_uid"] for r in s.on("/results")] == [uid], 60)
        assert app.terminate() == 0
    finally:
        subscriber.close()
