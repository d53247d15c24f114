"""Pipeline configs validate in one pass; every mistake becomes one line that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from photonstream.config.pipeline import PipelineConfig, load_pipeline, validate_pipeline
from photonstream.errors import ConfigError, PluginNotFoundError

GOOD = {
    "stream": {"experiment": "xpptut15", "run": 42, "stream_id": "epix"},
    "source": {"type": "hdf5", "files": ["/data/run42.cxi"]},
    "steps": [],
    "serializer": {"type": "hdf5", "compression": "bslz4"},
    "handlers": [{"type": "zmq-push", "address": "tcp://127.0.0.1:5555"}, {"type": "null"}],
}


def with_(**changes) -> dict:
    return {**GOOD, **changes}


def test_good_config_validates_into_plugin_option_models() -> None:
    config = validate_pipeline(GOOD)
    assert config.source.type == "hdf5" and config.source.files == ["/data/run42.cxi"]
    assert config.serializer.compression == "bslz4"
    assert [h.type for h in config.handlers] == ["zmq-push", "null"]
    assert config.stream.address == "xpptut15/42/epix"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (with_(source={"type": "nope"}), "source.type: unknown source 'nope'; known: "),
        (with_(steps=[{"type": "blur"}]), "steps[0].type: unknown step 'blur'; known: "),
        (with_(serializer={"type": "hdf5", "compression": "rar"}), "serializer.compression: Input should be"),
        (with_(handlers=[{"type": "zmq-push", "address": "nowhere"}]), "handlers[0].address: Value error"),
        (with_(handlers=[{"type": "null", "colour": "red"}]), "handlers[0].colour: unknown option"),
        (with_(handlers=[]), "handlers: List should have at least 1 item"),
        (with_(stream={"experiment": "../etc", "run": 1}), "stream: Value error, experiment must be"),
        (with_(stream={"experiment": "x", "run": -1}), "stream.run: Input should be greater than or equal to 0"),
        (with_(source={"type": "hdf5", "files": [], "stride": 0}), "source.files: List should have at least 1"),
        ({"source": {"type": "hdf5", "files": ["a.h5"]}}, "handlers: Field required"),
        ([1, 2], "(root): a pipeline config must be a mapping"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(raw, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_pipeline(raw)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_batch_must_be_last() -> None:
    with pytest.raises(ConfigError, match=r"steps\[0\]: 'batch' must be the last step"):
        validate_pipeline(with_(steps=[{"type": "batch", "size": 4}, {"type": "threshold", "threshold": 1}]))


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {type: hdf5\nhandlers: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_pipeline(bad)
    with pytest.raises(ConfigError, match="cannot read pipeline config"):
        load_pipeline(tmp_path / "missing.yaml")


def test_unknown_plugin_lists_the_known_ones() -> None:
    from photonstream.sources.base import registry

    with pytest.raises(PluginNotFoundError, match=r"known: .*hdf5"):
        registry.get("nope")


def test_json_schema_describes_every_plugin() -> None:
    schema = PipelineConfig.model_json_schema()
    text = str(schema)
    for name in ("hdf5", "msgpack", "zmq-push", "zmq-pub", "null"):
        assert f"'{name}'" in text
