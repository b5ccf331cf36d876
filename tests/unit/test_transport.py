"""daemon.transport's pure parts: the pending-connection caps, the PDU length caps, and reading
one PDU under a cap and a deadline (over a socketpair)."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from daemon.config import parse_config
from daemon.transport import (
    ABORT_INVALID_PARAMETER,
    ABORT_NOT_SPECIFIED,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
    FIXED_PDU_MAX,
    PDU_SLACK,
    REJECT_BUSY,
    NetworkLimits,
    PduRefused,
    PeerClosed,
    PendingConnections,
    abort_pdu,
    read_pdu,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_pending_connections_are_admitted_up_to_each_cap(clock: Clock) -> None:
    pending = PendingConnections(per_address=2, total=3, evict_after_s=1.0, clock=clock)
    assert pending.admit("a1", "A").admitted and pending.admit("a2", "A").admitted
    refused = pending.admit("a3", "A")  # per address, and the oldest is young
    assert not refused.admitted and refused.evicted == []
    assert refused.reason == "node.max_pending_per_address (2) reached"
    assert pending.admit("b1", "B").admitted
    refused = pending.admit("c1", "C")  # in total
    assert not refused.admitted and refused.reason == "node.max_pending_connections (3) reached"
    assert len(pending) == 3


def test_a_newcomer_evicts_the_oldest_of_its_pool_once_that_one_is_old(clock: Clock) -> None:
    pending = PendingConnections(per_address=2, total=3, evict_after_s=1.0, clock=clock)
    for conn, address in (("a1", "A"), ("b1", "B"), ("a2", "A")):
        pending.admit(conn, address)
        clock.now += 0.5
    # a3 (same address) evicts a1, the oldest of A's, not b1, the oldest of all
    admission = pending.admit("a3", "A")
    assert admission.admitted and admission.evicted == ["a1"]
    assert pending.finish("a1") == ("node.max_pending_per_address (2) reached", 1.5)
    # c1 (new address, total full) evicts b1, the oldest of all, once it is old enough
    assert not pending.admit("c1", "C").admitted  # b1 pending 1.0 s: not more than evict_after_s
    clock.now += 0.1
    admission = pending.admit("c1", "C")
    assert admission.admitted and admission.evicted == ["b1"]
    assert pending.finish("b1")[0] == "node.max_pending_connections (3) reached"  # type: ignore[index]
    assert sorted(map(str, pending.connections())) == ["a2", "a3", "c1"]


def test_a_finished_connection_frees_its_place_and_was_not_evicted(clock: Clock) -> None:
    pending = PendingConnections(per_address=1, total=1, clock=clock)
    assert pending.admit("a1", "A").admitted
    assert pending.finish("a1") is None  # its request came
    assert pending.finish("a1") is None  # twice is harmless
    assert pending.admit("b1", "B").admitted and len(pending) == 1


def test_length_caps_per_pdu_type() -> None:
    limits = NetworkLimits(max_request_pdu=65536, max_pdata_pdu=16384 + PDU_SLACK)
    assert limits.max_length(0x01) == 65536
    assert limits.max_length(0x04) == 16384 + PDU_SLACK
    assert [limits.max_length(t) for t in (0x03, 0x05, 0x06, 0x07)] == [FIXED_PDU_MAX] * 4
    assert limits.max_length(0x00) is None and limits.max_length(0x08) is None
    # while the request is awaited, only an A-ASSOCIATE-RQ or an A-ABORT may come
    assert limits.max_length(0x01, awaiting_request=True) == 65536
    assert limits.max_length(0x07, awaiting_request=True) == FIXED_PDU_MAX
    assert limits.max_length(0x04, awaiting_request=True) is None


@pytest.mark.parametrize(("max_pdu_size", "max_instance_mb", "pdata"), [
    (16384, 1024, 16384 + PDU_SLACK),
    (0, 10, 11 * 1024 * 1024),  # "unlimited": a whole instance in one PDU, not more
])
def test_limits_from_config(tmp_path, max_pdu_size: int, max_instance_mb: int, pdata: int) -> None:  # type: ignore[no-untyped-def]
    config = parse_config({"node": {"max_pdu_size": max_pdu_size, "acse_timeout_s": 7,
                                    "pdu_timeout_s": 5, "max_request_pdu_size": 65536,
                                    "max_pending_per_address": 3, "max_pending_connections": 9},
                           "limits": {"max_instance_mb": max_instance_mb}},
                          base=tmp_path, environ={})
    limits = NetworkLimits.from_config(config)
    assert limits == NetworkLimits(max_request_pdu=65536, max_pdata_pdu=pdata, request_timeout_s=7,
                                   pdu_timeout_s=5, max_associations=16,
                                   max_pending_per_address=3, max_pending=9)


def test_refusals_on_the_wire() -> None:
    assert abort_pdu(ABORT_INVALID_PARAMETER) == bytes.fromhex("07000000000400000206")
    # transient, service provider (presentation), local limit exceeded (PS3.8 9.3.4)
    assert REJECT_BUSY == bytes.fromhex("03000000000400020302")


# -- read_pdu over a socketpair -------------------------------------------------------------


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


LIMITS = NetworkLimits(max_request_pdu=1024, max_pdata_pdu=4096)


def _read(sock: socket.socket, within_s: float = 2.0) -> bytes:
    return read_pdu(sock, LIMITS.max_length, time.monotonic() + within_s, "no whole PDU in time")


def test_a_whole_pdu_is_read(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    pdu = struct.pack(">BBL", 0x04, 0, 10) + bytes(range(10))
    theirs.sendall(pdu + b"next")
    assert _read(ours) == pdu


@pytest.mark.parametrize(("header", "diagnostic", "text"), [
    (struct.pack(">BBL", 0x04, 0, 4097), ABORT_INVALID_PARAMETER,
     "P-DATA-TF declaring 4097 bytes, more than the 4096 accepted"),
    (struct.pack(">BBL", 0x01, 0, 3_000_000_000), ABORT_INVALID_PARAMETER,
     "A-ASSOCIATE-RQ declaring 3000000000 bytes, more than the 1024 accepted"),
    (struct.pack(">BBL", 0x09, 0, 4), ABORT_UNRECOGNIZED_PDU, "unknown PDU type 0x09"),
])
def test_a_pdu_over_its_cap_is_refused_at_the_header(pair, header: bytes, diagnostic: int,  # type: ignore[no-untyped-def]
                                                     text: str) -> None:
    ours, theirs = pair
    theirs.sendall(header + bytes(100))
    with pytest.raises(PduRefused) as info:
        _read(ours)
    assert (str(info.value), info.value.diagnostic) == (text, diagnostic)
    assert ours.recv(200) == bytes(100)  # nothing of the body was read


def test_an_unexpected_type_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    theirs.sendall(struct.pack(">BBL", 0x04, 0, 4))
    with pytest.raises(PduRefused) as info:
        read_pdu(ours, lambda t: LIMITS.max_length(t, awaiting_request=True),
                 time.monotonic() + 1, "late")
    assert info.value.diagnostic == ABORT_UNEXPECTED_PDU
    assert str(info.value) == "P-DATA-TF where it is not expected"


def test_a_drip_does_not_extend_the_deadline(pair) -> None:  # type: ignore[no-untyped-def]
    """A byte every 50 ms renews no per-recv timeout: the PDU is refused at its deadline."""
    ours, theirs = pair
    pdu = struct.pack(">BBL", 0x04, 0, 100) + bytes(100)
    stop = threading.Event()

    def drip() -> None:
        for n in range(len(pdu)):
            if stop.wait(0.05):
                return
            theirs.send(pdu[n:n + 1])

    t = threading.Thread(target=drip)
    t.start()
    start = time.monotonic()
    try:
        with pytest.raises(PduRefused) as info:
            _read(ours, within_s=0.5)
    finally:
        stop.set()
        t.join()
    took = time.monotonic() - start
    assert info.value.diagnostic == ABORT_NOT_SPECIFIED
    assert str(info.value).startswith("no whole PDU in time (")
    assert 0.45 < took < 5  # the deadline, not the 5 s the drip would take


def test_a_peer_that_closes_midway_is_reported_with_what_came(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    theirs.sendall(struct.pack(">BBL", 0x04, 0, 100) + bytes(30))
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed) as info:
        _read(ours)
    assert info.value.received == 36


def test_a_local_primitive_after_the_association_ended_is_dropped_not_fatal() -> None:
    """The PDU fuzzer caught pynetdicom's reactor thread dying with InvalidEventError: the
    association thread answered a release (Evt14) or aborted (Evt15) just after the DUL had
    aborted on a bad PDU (Sta13). The state table has no such transition: the event is dropped."""
    from pynetdicom import AE
    from pynetdicom.fsm import InvalidEventError, StateMachine

    from daemon.transport import GatedAssociation, NetworkLimits

    assoc = GatedAssociation(AE("RADTRIAGE"), b"", NetworkLimits())
    machine = assoc.dul.state_machine
    for event in ("Evt14", "Evt15", "Evt9"):
        machine.current_state = "Sta13"
        machine.do_action(event)  # pynetdicom's own would raise
        assert machine.current_state == "Sta13"
    # an event the table defines in Sta13 still acts (AA-6: a PDU is ignored)
    machine.do_action("Evt10")
    assert machine.current_state == "Sta13"
    # the wrapper matters: pynetdicom's state machine alone raises for the same event
    plain = StateMachine(assoc.dul)
    plain.current_state = "Sta13"
    with pytest.raises(InvalidEventError):
        plain.do_action("Evt14")
