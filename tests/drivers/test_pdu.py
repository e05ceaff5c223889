"""The SMS PDU codec (drivers/cellular/pdu.py): golden vectors, round trips of any text
through SUBMIT and DELIVER, part sizes, and hostile bytes that may raise only PduError."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.cellular.pdu import (
    PART_SEPTETS,
    Deliver,
    PduError,
    StatusReport,
    decode,
    decode_deliver,
    decode_submit,
    deliver_pdus,
    gsm7_septets,
    status_report_pdu,
    submit_pdus,
    tpdu_length,
)

AT = datetime(2026, 12, 5, 10, 32, 7, tzinfo=timezone(timedelta(hours=8)))
NUMBER = "+8613800138000"


def test_the_classic_hellohello_packs_as_the_references_show() -> None:
    # "hellohello" in 7-bit: E8329BFD4697D9EC37, the worked example of the GSM 7-bit packing
    # in TS 23.038 6.1.2.1.1 tutorials (e.g. dreamfabric.com/sms/hello.html).
    (pdu,) = submit_pdus(NUMBER, "hellohello", status_report=False)
    assert pdu.hex().upper().endswith("0A" + "E8329BFD4697D9EC37")
    # 00 SMSC, 11 SUBMIT+VP relative, 00 MR, 0D 91 683108108300F0 (+8613800138000), PID, DCS,
    # VP 24 h, UDL 10.
    assert pdu.hex().upper().startswith("0011000D91683108108300F00000A70A")
    assert tpdu_length(pdu) == len(pdu) - 1


def test_a_delivered_pdu_from_ts_23_040_examples_decodes() -> None:
    # An SMS-DELIVER as a Nokia/Siemens modem prints it ("How are you?" from +31641600986,
    # the widely reproduced example of the PDU format, e.g. gsm-modem.de/sms-pdu-mode.html).
    pdu = bytes.fromhex(
        "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
    )
    assert isinstance(decode(pdu), Deliver)
    deliver = decode_deliver(pdu)
    assert deliver.sender == "+31641600986"
    assert deliver.text == "How are you?"
    assert deliver.timestamp is not None and deliver.timestamp.year == 2002


@pytest.mark.parametrize(
    ("text", "parts", "dcs"),
    [
        ("a" * 160, 1, 0x00),
        ("a" * 161, 2, 0x00),
        ("€" * 80, 1, 0x00),  # two septets each: 160
        ("€" * 81, 2, 0x00),
        ("王" * 70, 1, 0x08),
        ("王" * 71, 2, 0x08),
        ("王" * 67 * 3, 3, 0x08),
    ],
)
def test_part_sizes_follow_the_limits(text: str, parts: int, dcs: int) -> None:
    pdus = submit_pdus(NUMBER, text)
    assert len(pdus) == parts
    assert all(decode_submit(p).text for p in pdus)
    assert "".join(decode_submit(p).text for p in pdus) == text


def test_an_escape_and_a_surrogate_pair_are_never_split() -> None:
    text = "a" * (PART_SEPTETS - 1) + "€" + "b" * 10  # the € would straddle the boundary
    pdus = submit_pdus(NUMBER, text)
    assert [decode_submit(p).text for p in pdus] == ["a" * (PART_SEPTETS - 1), "€" + "b" * 10]
    emoji = "王" * 66 + "😀" + "王" * 10
    pieces = [decode_submit(p).text for p in submit_pdus(NUMBER, emoji)]
    assert pieces[0] == "王" * 66 and pieces[1].startswith("😀")


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=1, max_size=600), reference=st.integers(0, 255))
def test_any_text_survives_submit_and_deliver(text: str, reference: int) -> None:
    text = text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")
    pdus = submit_pdus(NUMBER, text, reference=reference)
    submits = [decode_submit(p) for p in pdus]
    assert "".join(s.text for s in submits) == text
    assert all(s.number == NUMBER and s.status_report for s in submits)
    if len(pdus) > 1:
        assert [s.concat.sequence for s in submits if s.concat] == list(range(1, len(pdus) + 1))
        assert {s.concat.reference for s in submits if s.concat} == {reference}
    delivered = [decode_deliver(p) for p in deliver_pdus(NUMBER, text, AT)]
    assert "".join(d.text for d in delivered) == text
    assert all(d.timestamp == AT for d in delivered)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("@£$¥èé\nØ_ΔΦ !09AZaz{}[]~\\|^€"), max_size=400))
def test_gsm_text_stays_in_seven_bits(text: str) -> None:
    if not text:
        return
    septets = gsm7_septets(text)
    assert septets is not None
    for pdu in submit_pdus(NUMBER, text):
        assert pdu[13] == 0x00  # DCS (after SMSC, first octet, MR, 7-octet address, PID)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=200))
def test_hostile_bytes_raise_only_pdu_error(data: bytes) -> None:
    for decoder in (decode, decode_deliver, decode_submit):
        with contextlib.suppress(PduError):
            decoder(data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_valid_pdu_cut_or_bit_flipped_raises_only_pdu_error(data: st.DataObject) -> None:
    (pdu,) = deliver_pdus(NUMBER, "王秀英 3号楼", AT)[:1]
    cut = data.draw(st.integers(0, len(pdu)))
    flip = data.draw(st.integers(0, len(pdu) - 1))
    bad = bytearray(pdu[:cut] if data.draw(st.booleans()) else pdu)
    if bad and flip < len(bad):
        bad[flip] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(PduError):
        decode(bytes(bad))


def test_status_reports_say_delivered_pending_or_failed() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    for status, delivered, final in ((0x00, True, True), (0x30, False, False), (0x41, False, True)):
        report = decode(status_report_pdu(9, NUMBER, status, now))
        assert isinstance(report, StatusReport)
        assert (report.reference, report.recipient, report.status) == (9, NUMBER, status)
        assert report.delivered is delivered and report.final is final


@pytest.mark.parametrize("number", ["", "+", "12ab", "+" + "1" * 21, "１２３"])
def test_a_number_that_is_not_one_is_refused(number: str) -> None:
    with pytest.raises(PduError):
        submit_pdus(number, "hi")


def test_an_empty_text_and_too_many_parts_are_refused() -> None:
    with pytest.raises(PduError):
        submit_pdus(NUMBER, "")
    with pytest.raises(PduError):
        submit_pdus(NUMBER, "王" * 67 * 256)
