"""The systemd units, checked by systemd's own analyser, and the install script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_config

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ("scanside.service", "scanside-engine.service")
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@pytest.fixture
def units(tmp_path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's scanside, so that `verify` can
    check the executable exists."""
    scanside = Path(sys.executable).with_name("scanside")
    out = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/scanside/venv/bin/scanside",
                                                    str(scanside))
        (tmp_path / name).write_text(text)
        out.append(tmp_path / name)
    return out


@needs_analyze
def test_systemd_analyze_verify_accepts_the_units(units):
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "scanside" not in result.stderr          # no warning about our units


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_exposure_is_at_most_2_5(units, name):
    unit = next(u for u in units if u.name == name)
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, check=True).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert exposure <= 2.5, out


def test_the_service_is_notify_with_a_watchdog_and_reaches_only_inbox_state_and_gpu():
    unit = (SYSTEMD / "scanside.service").read_text()
    for line in ("Type=notify", "WatchdogSec=60", "Restart=on-failure", "User=scanside",
                 "StateDirectory=scanside", "ReadWritePaths=/srv/scanside/inbox",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "DevicePolicy=closed"):
        assert line in unit.splitlines(), line
    devices = [line for line in unit.splitlines() if line.startswith("DeviceAllow=")]
    assert devices and all("nvidia" in line for line in devices)
    engine = (SYSTEMD / "scanside-engine.service").read_text()
    assert "Type=oneshot" in engine and "Before=scanside.service" in engine
    assert "--if-needed" in engine


def test_install_script_puts_a_valid_config_and_the_units_in_place(tmp_path):
    root = tmp_path / "root"
    result = subprocess.run([str(SYSTEMD / "install.sh"), "--no-venv", "--inbox", "/data/in"],
                            env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = load_config(root / "etc/scanside/scanside.toml")
    assert config.paths.inbox == Path("/data/in")
    assert config.paths.state_dir == Path("/var/lib/scanside")
    service = (root / "etc/systemd/system/scanside.service").read_text()
    assert "ReadWritePaths=/data/in" in service
    assert (root / "data/in").is_dir()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_install_and_zoo_build_scripts_pass_shellcheck():
    zoo_build = SYSTEMD.parent / "models" / "zoo" / "build.sh"
    subprocess.run(["shellcheck", str(SYSTEMD / "install.sh"), str(zoo_build)], check=True)
