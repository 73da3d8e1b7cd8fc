"""Configuration: one TOML file validated at start-up into typed, frozen models.

Every key is optional; `edge/default.toml` lists them all with their defaults and
meaning. An unknown key or a value out of range stops start-up with a message that names
the key, the value and what is allowed; nothing is silently fixed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.errors import ConfigError

DEFAULT_TOML = Path(__file__).with_name("default.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApplianceConfig(_Section):
    id: str = Field("scanside", pattern=r"^[A-Za-z0-9_-]{1,64}$")


class PathsConfig(_Section):
    inbox: Path = Path("var/inbox")
    state_dir: Path = Path("var/state")
    quarantine: Path | None = None

    @property
    def quarantine_dir(self) -> Path:
        return self.quarantine or self.state_dir / "quarantine"


class IngestConfig(_Section):
    workers: int = Field(2, ge=1, le=64)
    worker_memory_mb: int = Field(4096, ge=256, le=1_048_576)
    file_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_file_mb: int = Field(2048, ge=1, le=1_048_576)
    stable_s: float = Field(2.0, ge=0, le=3600)
    incomplete_grace_s: float = Field(300.0, ge=0, le=86_400)
    rescan_s: float = Field(10.0, gt=0, le=3600)
    ignore: tuple[str, ...] = ("*.part", ".*", "*.tmp", "*~")


class QuietPeriods(_Section):
    CT: float = Field(15.0, gt=0, le=86_400)
    MR: float = Field(30.0, gt=0, le=86_400)
    PT: float = Field(30.0, gt=0, le=86_400)
    other: float = Field(30.0, gt=0, le=86_400)

    def by_modality(self) -> dict[str, float]:
        return {"CT": self.CT, "MR": self.MR, "PT": self.PT}


class SeriesConfig(_Section):
    quiet_s: QuietPeriods = QuietPeriods()
    gap_factor: float = Field(1.5, gt=1, le=10)
    forget_after_s: float = Field(600.0, gt=0, le=7 * 86_400)


class MqttConfig(_Section):
    broker: str = Field("", pattern=r"^$|^mqtts?://")
    topic_prefix: str = Field("", pattern=r"^$|^[^#+]+[^/#+]$")
    keepalive_s: int = Field(30, ge=2, le=3600)
    max_inflight: int = Field(32, ge=1, le=65535)
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    embedded_port: int = Field(1883, ge=1, le=65535)

    def prefix(self, appliance_id: str) -> str:
        return self.topic_prefix or f"scanside/{appliance_id}"


class ModelsConfig(_Section):
    zoo: Path | None = None
    backend: str = Field("auto", pattern=r"^(auto|onnxruntime|tensorrt)$")
    engines: Path | None = None
    threads: int = Field(0, ge=0, le=256)
    batch_size: int = Field(8, ge=1, le=256)


class PrivacyConfig(_Section):
    include_patient_identifiers: bool = False


class HealthConfig(_Section):
    min_free_mb: int = Field(1024, ge=0, le=1_048_576)


class WebConfig(_Section):
    listen: str = Field("127.0.0.1:8080",
                        pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
    token_file: Path | None = None

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    @model_validator(mode="after")
    def _token_when_exposed(self) -> WebConfig:
        if not self.loopback and self.token_file is None:
            raise ValueError(f"listen = {self.listen!r} exposes the status page beyond this "
                             "machine: set [web] token_file")
        return self


class Config(_Section):
    appliance: ApplianceConfig = ApplianceConfig()
    paths: PathsConfig = PathsConfig()
    ingest: IngestConfig = IngestConfig()
    series: SeriesConfig = SeriesConfig()
    mqtt: MqttConfig = MqttConfig()
    models: ModelsConfig = ModelsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    health: HealthConfig = HealthConfig()
    web: WebConfig = WebConfig()


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Read `path` (or only the defaults when None), apply dotted-key `overrides` such as
    ``{"paths.inbox": "/srv/inbox"}`` from the command line, and validate.

    Raises ConfigError naming the file, the key, the value and what is allowed.
    """
    source = str(path) if path is not None else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"config {source}: cannot be read: {error.strerror}") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config {source}: not valid TOML: {error}") from error
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        problems = "\n".join(f"  {_describe(e)}" for e in error.errors())
        raise ConfigError(f"config {source}: invalid\n{problems}") from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    for section in sections:
        data = data.setdefault(section, {})
    data[key] = str(value) if isinstance(value, Path) else value


def _describe(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    key = f"[{'.'.join(location[:-1])}] {location[-1]}" if len(location) > 1 else location[0]
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(location[:-1]))
        return f"unknown key {key}; allowed keys here: {allowed}"
    return f"{key} = {error['input']!r}: {error['msg'].lower()}"


def _fields_at(location: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in location:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
