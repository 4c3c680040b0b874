"""Reading a JSON file a person may have edited: whatever is wrong in it, the error names the file."""

from __future__ import annotations

import json

import pytest

from avae.errors import AvaeError, ConfigError
from avae.io import file_lock, read_json
from avae.training.config import make_config


def read_config_json(path):
    """As a run's config.json is read: its "config" entry made a configuration."""
    return read_json(path, "run configuration", parse=lambda record: make_config(record["config"]))


@pytest.mark.parametrize(
    "record,error,fragment",
    [
        (
            {"config": {"model": {"name": "vae", "latent_dim": "ten"}}},
            ConfigError,
            "latent_dim must be an integer",
        ),
        ({"config": {"epochs": -1}}, ConfigError, "epochs must be a positive integer, got -1"),
        ({"conf": {}}, AvaeError, "lacks or garbles an entry (KeyError: 'config')"),
        (["config"], AvaeError, "lacks or garbles an entry (TypeError"),
    ],
)
def test_a_bad_value_in_a_hand_edited_file_names_the_file(tmp_path, record, error, fragment):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(record))
    with pytest.raises(error) as raised:
        read_config_json(path)
    message = str(raised.value)
    assert message.startswith(f"run configuration {path}") and fragment in message and "\n" not in message


def test_unreadable_json_names_the_file_and_a_good_file_is_parsed(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"config": ')
    with pytest.raises(AvaeError, match=f"run configuration {path} is not readable JSON"):
        read_config_json(path)
    path.write_text(json.dumps({"config": {"model": "avae", "epochs": 3}}))
    cfg = read_config_json(path)
    assert cfg.model.name == "avae" and cfg.epochs == 3


def test_file_lock_refuses_a_second_holder_without_waiting(tmp_path):
    path = tmp_path / "sub" / ".lock"
    with file_lock(path) as held:
        assert held and path.exists()
        with file_lock(path, blocking=False) as second:  # another open of the file
            assert second is False
    with file_lock(path, blocking=False) as again:
        assert again is True
    assert path.exists()  # left in place for the next holder
