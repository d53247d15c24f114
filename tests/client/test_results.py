"""Typed results: each kind's fields are checked before they leave the consumer, and again when the API reads them."""

from __future__ import annotations

import msgpack
import pytest

from photonstream.client.results import check_result, decode_result, encode_result
from photonstream.errors import ConfigError


def test_each_kind_checks_its_fields_with_one_clear_line() -> None:
    assert check_result("indexing_rate", {"frames": 8, "indexed": 2}) == {"frames": 8, "indexed": 2, "rate": 0.25}
    with pytest.raises(ConfigError, match="result kind 'hits' is not one of hit_rate, indexing_rate"):
        check_result("hits", {})
    with pytest.raises(ConfigError, match="hits cannot exceed frames"):
        check_result("hit_rate", {"frames": 1, "hits": 2})
    with pytest.raises(ConfigError, match=r"result unit_cell.*gamma"):
        check_result("unit_cell", {"a": 1, "b": 1, "c": 1, "alpha": 90, "beta": 90})
    with pytest.raises(ConfigError, match=r"edges \(3\) must be one more than counts \(3\)"):
        check_result("tof_histogram", {"quantity": "mq", "edges": [0, 1, 2], "counts": [1, 2, 3]})
    with pytest.raises(ConfigError, match=r"training_loss\.accuracy: unknown option"):
        check_result("training_loss", {"step": 1, "loss": 0.5, "accuracy": 0.9})
    assert check_result("custom", {"anything": [1, 2]}) == {"anything": [1, 2]}


def test_encoding_carries_provenance_and_bounds_the_size() -> None:
    header, payload = encode_result("exp/1/abc", "training_loss", {"step": 5, "loss": 0.1}, group="train",
                                    worker="gpu0", frames=(0, 99), n=7)  # fmt: skip
    assert header == {"s": "exp/1/abc", "t": "training_loss", "g": "train", "w": "gpu0", "n": 7, "f": [0, 99]}
    item = {"id": 3, "s": "exp/1/abc", "t": "training_loss", "g": "train", "w": "gpu0", "f": [0, 99],
            "at": 1.5, "by": "curve:KEY", "d": payload}  # fmt: skip
    decoded = decode_result(item)
    assert decoded["data"] == {"step": 5, "loss": 0.1} and (decoded["first_frame"], decoded["last_frame"]) == (0, 99)
    assert decoded["publisher"] == "curve:KEY" and decoded["buffer_id"] == 3
    with pytest.raises(ConfigError, match="frames must be"):
        encode_result("exp/1/abc", "custom", {}, frames=(5, 1))
    with pytest.raises(ConfigError, match="more than the limit"):
        encode_result("exp/1/abc", "custom", {"blob": "x" * (1 << 20)})
    tampered = {**item, "d": msgpack.packb({"step": -1, "loss": 0.1})}  # the API checks again what it collects
    with pytest.raises(ConfigError, match="step"):
        decode_result(tampered)
