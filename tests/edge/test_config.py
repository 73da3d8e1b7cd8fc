"""Configuration: typed, documented, and strict about what it accepts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.config import DEFAULT_TOML, Config, load_config
from edge.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scanside.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults():
    assert load_config() == Config()


def test_the_documented_example_is_exactly_the_defaults():
    assert load_config(DEFAULT_TOML) == Config()


def test_every_key_is_documented_in_the_example_config():
    documented = tomllib.loads(DEFAULT_TOML.read_text())
    text = DEFAULT_TOML.read_text()

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            if hasattr(field.annotation, "model_fields"):
                yield from keys(field.annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", name

    for dotted, name in keys(Config):
        section = documented
        for part in dotted.split(".")[:-1]:
            section = section[part]
        assert name in section or f"# {name} =" in text, f"{dotted} is not in default.toml"


def test_values_from_the_file_are_typed(tmp_path):
    config = load_config(write(tmp_path, "[ingest]\nworkers = 4\n[series.quiet_s]\nMR = 45\n"))
    assert config.ingest.workers == 4
    assert config.series.quiet_s.MR == 45.0
    assert config.paths.quarantine_dir == Path("var/state/quarantine")


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "[ingest]\nwrokers = 4\n"))
    message = str(caught.value)
    assert "unknown key [ingest] wrokers" in message
    assert "workers" in message and str(tmp_path) in message


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown key injest"):
        load_config(write(tmp_path, "[injest]\nworkers = 4\n"))


def test_out_of_range_value_names_key_value_and_limit(tmp_path):
    with pytest.raises(ConfigError, match=r"\[ingest\] workers = 0: input should be greater "
                                          r"than or equal to 1"):
        load_config(write(tmp_path, "[ingest]\nworkers = 0\n"))


def test_wrong_type_is_refused_not_coerced_silently(tmp_path):
    with pytest.raises(ConfigError, match=r"\[ingest\] stable_s = 'soon'"):
        load_config(write(tmp_path, "[ingest]\nstable_s = 'soon'\n"))


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[ingest\n"))


def test_command_line_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "[paths]\ninbox = '/from/file'\n")
    config = load_config(path, {"paths.inbox": Path("/from/cli"), "paths.state_dir": None})
    assert config.paths.inbox == Path("/from/cli")
    assert config.paths.state_dir == Path("var/state")


def test_appliance_id_must_be_safe_for_topics(tmp_path):
    with pytest.raises(ConfigError, match=r"\[appliance\] id = 'ct/1'"):
        load_config(write(tmp_path, "[appliance]\nid = 'ct/1'\n"))
