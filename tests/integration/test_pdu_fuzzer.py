"""A hypothesis fuzzer of association-level PDUs (issue 17): raw sockets against the Storage SCP
in-process, with short timeouts.

Each example opens a connection and sends a first PDU (an A-ASSOCIATE-RQ whose fields, items,
item lengths and PDU length are mutated, or truncated; or a P-DATA-TF, A-RELEASE-RQ, A-ABORT,
an unknown type or an oversized header where the request should be), then up to three more in
any order (a C-ECHO, garbage P-DATA, release, abort, another request, a huge or partial header),
then either closes the connection or waits. A connection the fuzzer waits on must end, from
the receiver's side, in an A-ASSOCIATE-RJ, an A-ABORT, an A-RELEASE-RP or a plain close, within
a bound (the timeouts, plus slack for a slow machine). After all of them no association slot
and no pending connection is left, and a C-ECHO from an allowed AE is answered.
"""

from __future__ import annotations

import struct
from collections import Counter
from contextlib import closing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import echo, wait_for
from tests.pdus import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    P_DATA_TF,
    abort,
    application_context,
    associate_rq,
    c_echo_command,
    connect,
    item,
    p_data,
    pdu,
    presentation_context,
    read_pdu_type,
    read_pdus_until_closed,
    release_rq,
    send_quietly,
    user_information,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
NODE = {"acse_timeout_s": TIMEOUT_S, "pdu_timeout_s": TIMEOUT_S, "network_timeout_s": TIMEOUT_S,
        "dimse_timeout_s": 2, "max_associations": 2, "max_pdu_size": 16384,
        "max_request_pdu_size": 8192, "max_pending_per_address": 4,
        "max_pending_connections": 8, "allowed_calling_aes": ["ECHOSCU"]}
#: How long after its last byte a connection may stay open: the timeouts, plus a slow machine.
ENDS_WITHIN_S = 3 * TIMEOUT_S + 6
CR_STORAGE = b"1.2.840.10008.5.1.4.1.1.1"

_uid = st.sampled_from([b"1.2.840.10008.1.1", CR_STORAGE, b"", b"1.2.3" * 20, b"\x00\xff"])
_item = st.one_of(
    st.just(application_context()),
    st.builds(application_context, _uid),
    st.builds(presentation_context, st.integers(0, 255), _uid,
              st.lists(st.sampled_from([b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b""]),
                       max_size=3).map(tuple)),
    st.builds(user_information, st.integers(0, 0xFFFFFFFF)),
    st.builds(user_information, st.just(16384), _uid, st.binary(max_size=40)),
    st.builds(item, st.integers(0, 255), st.binary(max_size=64)),
)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """An A-ASSOCIATE-RQ, valid or mutated."""
    items = draw(st.one_of(
        st.just([application_context(), presentation_context(), user_information()]),
        st.lists(_item, max_size=6)))
    data = bytearray(associate_rq(
        called=draw(st.sampled_from(["RADTRIAGE", "RADTRIAGE", "ELSEWHERE", ""])),
        calling=draw(st.sampled_from(["ECHOSCU", "ECHOSCU", "STRANGER", " "])),
        items=items, version=draw(st.sampled_from([1, 1, 1, 0, 2]))))
    mutations = st.lists(st.tuples(st.sampled_from(["flip", "item length", "pdu length", "truncate"]),
                                   st.integers(0, 1 << 16), st.integers(0, 0xFFFFFFFF)),
                         min_size=1, max_size=2)
    for kind, at, value in draw(st.one_of(st.just([]), mutations)):
        if kind == "flip" and len(data) > 6:
            data[6 + at % (len(data) - 6)] ^= value % 255 + 1
        elif kind == "item length" and len(data) > 76:  # the items begin after 74 bytes
            offset = 74 + at % (len(data) - 76)
            data[offset:offset + 2] = struct.pack(">H", value & 0xFFFF)
        elif kind == "pdu length":
            data[2:6] = struct.pack(">L", value)
        else:
            del data[max(1, at % len(data)):]
    return bytes(data)


_other = st.one_of(
    st.builds(lambda cx, n: p_data(cx, c_echo_command(n)), st.sampled_from([1, 1, 3, 255]),
              st.integers(1, 0xFFFF)),
    st.builds(lambda b: pdu(P_DATA_TF, b), st.binary(max_size=200)),
    st.just(release_rq()),
    st.just(abort()),
    st.builds(lambda t, n: struct.pack(">BBL", t, 0, n) + bytes(min(n, 1024)),
              st.sampled_from([0x01, 0x04, 0x05, 0x07]),
              st.sampled_from([17_000, 9_000, 2_000_000_000, 0xFFFFFFFF])),  # over the caps
    st.builds(lambda t, b: pdu(t, b), st.sampled_from([0x00, 0x02, 0x03, 0x06, 0x08, 0xFF]),
              st.binary(max_size=32)),
    st.builds(lambda b: b, st.binary(min_size=1, max_size=5)),  # a partial header
)

_then = st.lists(st.one_of(_other, _other, request()), max_size=3)
_end = st.sampled_from(["wait", "close"])
_fuzz = settings(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def receiver(receivers):  # type: ignore[no-untyped-def]
    rcv, _ = receivers(node=NODE)
    yield rcv
    # afterwards: no association slot and no pending connection left, and the next sender served
    wait_for(lambda: not rcv.ae.active_associations and not len(rcv._server.pending),
             ENDS_WITHIN_S + 5, "every association and pending connection to end")
    assert rcv._server.slots_held() == 0
    assert echo(rcv.port, calling="ECHOSCU"), "C-ECHO from an allowed AE after the fuzzing"


def finish(sock, sent: list[bytes], then: list[bytes], end: str, outcomes: Counter[str]) -> None:  # type: ignore[no-untyped-def]
    """Send ``then``, then close (``end`` "close") or wait for the receiver to end the
    connection, which it must within ENDS_WITHIN_S; count how it ended."""
    for data in then:
        if not send_quietly(sock, data):
            break
    if end == "close":
        outcomes["closed by us"] += 1
        return
    types, closed = read_pdus_until_closed(sock, within_s=ENDS_WITHIN_S)
    assert closed, f"still open {ENDS_WITHIN_S} s after {[*sent, *then]!r}; got {types}"
    assert not types or types[-1] in (A_ASSOCIATE_RJ, A_ABORT, A_RELEASE_RP, P_DATA_TF), types
    last = types[-1] if types else None
    outcomes[{None: "closed", A_ASSOCIATE_RJ: "rejected", A_ABORT: "aborted",
              A_RELEASE_RP: "released", P_DATA_TF: "answered, then closed"}[last]] += 1


def test_fuzzed_first_pdus_end_in_a_refusal_an_abort_or_a_close(receiver) -> None:  # type: ignore[no-untyped-def]
    """Whatever comes where the A-ASSOCIATE-RQ should."""
    outcomes: Counter[str] = Counter()

    @settings(_fuzz, max_examples=60)
    @given(first=st.one_of(request(), _other), then=_then, end=_end)
    @example(first=associate_rq(calling="STRANGER"), then=[], end="wait")  # not allowed: RJ
    @example(first=associate_rq(version=2), then=[], end="wait")  # RJ, protocol version
    @example(first=associate_rq(), then=[], end="wait")  # accepted, then the idle timeout
    def one(first: bytes, then: list[bytes], end: str) -> None:
        with closing(connect(receiver.port)) as sock:
            finish(sock, [], [first, *then], end, outcomes)

    one()
    print(f"\nfuzzed first PDUs: {dict(outcomes)}")
    for outcome in ("rejected", "aborted", "closed"):
        assert outcomes[outcome], f"no example ended {outcome}: {dict(outcomes)}"


def test_fuzzed_pdus_after_negotiation_end_in_an_abort_a_release_or_a_close(receiver) -> None:  # type: ignore[no-untyped-def]
    """An allowed AE's association accepted, then PDUs in any order: C-ECHO, garbage P-DATA,
    release, abort, another request, huge or partial headers."""
    outcomes: Counter[str] = Counter()

    @settings(_fuzz, max_examples=40)
    @given(then=_then, end=_end)
    @example(then=[release_rq()], end="wait")
    @example(then=[p_data(1, c_echo_command(7)), release_rq()], end="wait")
    @example(then=[p_data(1, c_echo_command(7)), release_rq(), release_rq()], end="wait")
    def one(then: list[bytes], end: str) -> None:
        with closing(connect(receiver.port)) as sock:
            rq = associate_rq(calling="ECHOSCU")
            sock.sendall(rq)
            assert read_pdu_type(sock, within_s=ENDS_WITHIN_S) == A_ASSOCIATE_AC
            finish(sock, [rq], then, end, outcomes)

    one()
    print(f"\nfuzzed PDUs after negotiation: {dict(outcomes)}")
    for outcome in ("aborted", "released", "closed by us"):
        assert outcomes[outcome], f"no example ended {outcome}: {dict(outcomes)}"


def test_refused_connections_are_counted_by_stage(receivers) -> None:  # type: ignore[no-untyped-def]
    """``radtriage_connections_refused`` (``/metrics``) tells an operator the edge is under
    attack: a request declaring too much, and a PDU declaring too much after negotiation."""
    from daemon import metrics

    def count(stage: str) -> float:
        return metrics.CONNECTIONS_REFUSED.labels(stage)._value.get()

    receiver, _ = receivers(node={"acse_timeout_s": 2, "pdu_timeout_s": 1})
    before = {stage: count(stage) for stage in ("request", "pdu")}
    with closing(connect(receiver.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 3_000_000_000))  # an A-ASSOCIATE-RQ of 3 GB
        read_pdus_until_closed(sock, 5)
    with closing(connect(receiver.port)) as sock:
        sock.sendall(associate_rq())
        assert read_pdu_type(sock, 5) == 0x02  # A-ASSOCIATE-AC
        sock.sendall(struct.pack(">BBL", 0x04, 0, 2_000_000_000))  # a P-DATA-TF of 2 GB
        read_pdus_until_closed(sock, 5)
    wait_for(lambda: count("request") > before["request"] and count("pdu") > before["pdu"],
             10, "both refusals to be counted")
