"""gateway/config_base.py: every problem at once, hostile shapes, and every number bounded on
its field (the one place a setting's range is written)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from common.errors import ConfigError
from gateway.config import Config, config_from_mapping, parse_config
from gateway.config_base import Section, convert, range_text

GATEWAY = {"gateway": {"id": "gw-1"}}


def problems(data: dict[str, Any]) -> dict[str, str]:
    value, found = convert(data, Config)
    assert (value is None) == bool(found)
    return {p.key: p.message for p in found}


def test_a_valid_mapping_converts_and_a_config_round_trips() -> None:
    cfg = config_from_mapping({**GATEWAY, "buttons": {"devices": [{"id": "t-1"}]}})
    assert cfg.buttons is not None and cfg.access is None
    # A mapping made from a Config says `None` for a section left out.
    assert config_from_mapping(msgspec.to_builtins(cfg)) == cfg


def test_ranges_and_rules_are_reported_together() -> None:
    found = problems(
        {
            "gateway": {"id": "GW"},
            "uplink": {"port": 0, "keepalive_s": 2},
            "forwarding": {"window": 4, "lane0_reserved": 4},
            "buttons": {"devices": [{"id": "t-1"}, {"id": "t-1", "supervision_s": -1}]},
        }
    )
    assert found["uplink.port"] == "must be between 1 and 65535"
    assert found["uplink.keepalive_s"] == "must be between 5 and 3600"
    assert "lower-case" in found["gateway.id"]
    assert "below forwarding.window" in found["forwarding.lane0_reserved"]
    assert found["buttons.devices.id"] == "duplicate device ids: t-1"
    assert "between 0 and 604800" in found["buttons.devices.supervision_s"]


def test_a_rule_is_not_repeated_for_a_key_already_wrong() -> None:
    found = problems({**GATEWAY, "forwarding": {"window": 0, "lane0_reserved": 8}})
    assert set(found) == {"forwarding.window"}  # the window's default (64) stands in


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"gateway": 5}, "gateway", "must be a table"),
        ({**GATEWAY, "uplink": []}, "uplink", "must be a table"),
        ({**GATEWAY, "buttons": {"devices": {"id": "t-1"}}}, "buttons.devices", "list of tables"),
        ({**GATEWAY, "buttons": {"devices": [5]}}, "buttons.devices", "must be a table"),
        ({**GATEWAY, "uplink": {"port": "1883"}}, "uplink.port", "got `str`"),
        ({**GATEWAY, "uplink": {"port": True}}, "uplink.port", "got `bool`"),
        ({**GATEWAY, "uplink": {"port": 2**63 - 1}}, "uplink.port", "between 1 and 65535"),
        ({**GATEWAY, "health": {"interval_s": math.inf}}, "health.interval_s", "finite"),
        ({**GATEWAY, "health": {"interval_s": math.nan}}, "health.interval_s", "finite"),
        (
            {**GATEWAY, "forwarding": {"require_consumer_lanes": [0, 7]}},
            "forwarding.require_consumer_lanes",
            "between 0 and 3",
        ),
        ({**GATEWAY, "uplink": {"deep": {"a": {"b": {}}}}}, "uplink.deep", "unknown key"),
        ({"uplink": {}}, "gateway", "missing required table `gateway`"),
        ({"gateway": {}}, "gateway", "missing required key `id`"),
    ],
)
def test_hostile_shapes_are_named(data: dict[str, Any], key: str, fragment: str) -> None:
    found = problems(data)
    assert fragment in found[key], found


def test_the_file_names_the_line_of_each_problem() -> None:
    text = '[gateway]\nid = "gw-1"\n\n[[buttons.devices]]\nid = "t-1"\n\n[[buttons.devices]]\n'
    text += 'id = "t-2"\nsupervision_s = -3\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="gw.toml")
    assert str(caught.value).startswith("gw.toml:9: buttons.devices.supervision_s: ")


def test_range_text() -> None:
    assert range_text(mi.IntType(ge=1, le=5)) == "must be between 1 and 5"
    assert range_text(mi.FloatType(gt=0)) == "must be above 0"
    assert range_text(mi.FloatType(ge=0, lt=1)) == "must be at least 0 and below 1"
    assert range_text(mi.StrType()) is None


def _sections(model: type[Section], seen: set[type[Section]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in mi.type_info(model).fields:  # type: ignore[attr-defined]
        for child in _types(field.type):
            if isinstance(child, mi.StructType):
                _sections(child.cls, seen)


def _types(info: mi.Type) -> list[mi.Type]:
    if isinstance(info, mi.Metadata):
        return _types(info.type)
    if isinstance(info, mi.UnionType):
        return [t for member in info.types for t in _types(member)]
    if isinstance(info, mi.ListType):
        return _types(info.item_type)
    return [info]


def test_every_number_of_every_section_is_bounded_on_its_field() -> None:
    seen: set[type[Section]] = set()
    _sections(Config, seen)
    assert len(seen) > 20
    unbounded = {
        f"{model.__name__}.{field.name}"
        for model in seen
        for field in mi.type_info(model).fields  # type: ignore[attr-defined]
        for t in _types(field.type)
        if isinstance(t, mi.IntType | mi.FloatType) and t.ge is None and t.gt is None
    }
    assert unbounded == set(), "each number's lowest value is on its field"
