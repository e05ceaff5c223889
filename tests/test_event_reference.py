"""docs/events.md is generated from the event kinds and must stay in step with them."""

from __future__ import annotations

from gateway import event_reference
from gateway.events import KIND_LANES, KINDS, Kind


def test_docs_events_md_is_the_generated_reference() -> None:
    on_disk = event_reference.DOC.read_text(encoding="utf-8")
    assert on_disk == event_reference.render(), "run `python -m gateway.event_reference`"


def test_every_kind_has_a_lane_and_a_meaning() -> None:
    assert set(KINDS) == set(Kind)
    assert all(info.summary.endswith(".") for info in KINDS.values())
    assert KIND_LANES["alarm.raised"] == KINDS[Kind.ALARM_RAISED].lane


def test_a_kind_from_outside_is_valid_only_if_it_is_in_the_table() -> None:
    """The ingest socket's kinds come from another process: near misses are refused."""
    from gateway.events import is_valid_kind

    assert is_valid_kind("alarm.raised")
    for hostile in (
        "alarm.raised\n",
        " alarm.raised",
        "ALARM.RAISED",
        "alarm.raised.x",
        "alarm",
        "",
        "alarm.rais\u0435d",  # a Cyrillic e
        "a." * 100_000,
        "Kind.ALARM_RAISED",
    ):
        assert not is_valid_kind(hostile), hostile
