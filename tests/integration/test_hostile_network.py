"""The daemon as an attacker's victim sees it (issue 17, findings 1 and 2): ``radtriage serve`` in
a subprocess, attacked with raw sockets before any AE title check, watched from outside through
its resident memory (/proc) and C-ECHO from an allowed AE.

- A PDU whose declared length is more than the node accepts (an A-ASSOCIATE-RQ of 3,000 MB; a
  P-DATA-TF of ~2 GB after a real negotiation) is refused at its header: the connection is
  closed before the body is read, so streaming zeros at it costs the daemon nothing.
- Half-open connections (a partial PDU and a drip of bytes; idle sockets) from other hosts,
  more than ``node.max_associations`` and beyond the pending caps, take no association slot and
  are each closed within ``node.acse_timeout_s`` of their connect; an allowed AE gets its
  association throughout.

The limits are small here (seconds, a few connections) so the file takes seconds; the bounds on
time are generous, the bounds on the property (memory, slots, who gets in) are tight. Each test
prints its figures (``-s`` shows them; docs/reliability.md quotes them).
"""

from __future__ import annotations

import re
import selectors
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon.transport import EVICT_AFTER_S
from tests.integration.conftest import Daemon, echo
from tests.pdus import (
    A_ASSOCIATE_AC,
    associate_rq,
    connect,
    read_pdus_until_closed,
    send_quietly,
)
from tests.senders import PeakMemory, memory_mb

pytestmark = pytest.mark.integration

ACSE_TIMEOUT_S = 3.0
PDU_TIMEOUT_S = 2.0
NODE = {
    "allowed_calling_aes": ["ECHOSCU"],
    "max_associations": 2,
    "acse_timeout_s": ACSE_TIMEOUT_S,
    "pdu_timeout_s": PDU_TIMEOUT_S,
    "max_pending_per_address": 4,
    "max_pending_connections": 8,
}
#: Most the daemon's resident memory may grow while it is attacked, MB.
GROWTH_MB = 30
#: Zeros streamed behind a huge header (the daemon must stop reading long before).
STREAM_MB = 64
#: Time allowed beyond a limit before a test calls a connection unclosed (a slow machine).
SLACK_S = 6.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, untrained_checkpoint: Path) -> Iterator[Daemon]:
    """One daemon for the module (starting one costs seconds): the attacks are independent."""
    from tests.conftest import free_port

    d = Daemon(tmp_path_factory.mktemp("hostile"), untrained_checkpoint, free_port(),
               node=NODE, model={"warm_up": False})
    d.start()
    yield d
    d.kill()


def timed_echo(port: int) -> float | None:
    """Seconds a C-ECHO from the allowed AE took, None if it was not answered."""
    start = time.monotonic()
    return time.monotonic() - start if echo(port, calling="ECHOSCU") else None


def stream_zeros(sock, header: bytes) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Send ``header`` and then up to STREAM_MB of zeros; (bytes of zeros the daemon took before
    it closed the connection, seconds until it did)."""
    start = time.monotonic()
    sock.sendall(header)
    chunk, sent = bytes(1 << 20), 0
    sock.settimeout(10)
    while sent < STREAM_MB << 20 and send_quietly(sock, chunk):
        sent += len(chunk)
    _, closed = read_pdus_until_closed(sock, within_s=SLACK_S)
    assert closed, "the daemon kept the connection open after the oversized PDU"
    return sent, time.monotonic() - start


def assert_logged_at_most_once(d: Daemon, peers: list[tuple[str, int]]) -> None:
    """Each refused or timed-out connection gets one WARNING naming its address, at the most
    (daemon.logs holds back repeats of one kind from one host, with a count), and every
    attacking host is named at least once."""
    lines = [line for line in d.log_path.read_text(errors="replace").splitlines()
             if " WARNING " in line and "daemon.transport" in line]
    for host, port in peers:
        assert sum(f"{host}:{port}" in re.findall(r"[\d.]+:\d+", line) for line in lines) <= 1
    for host in {host for host, _ in peers}:
        assert any(f"{host}:" in line for line in lines), f"nothing logged about {host}"


def test_huge_declared_pdus_are_refused_at_the_header_without_buffering(daemon: Daemon) -> None:
    before = memory_mb(daemon.proc.pid)["own_rss"]
    with PeakMemory(daemon.proc.pid) as rss:
        # an A-ASSOCIATE-RQ that declares 3,000 MB, before any AE title could be checked
        sock = connect(daemon.port, "127.0.0.2")
        rq_taken, rq_s = stream_zeros(sock, struct.pack(">BBL", 0x01, 0, 3_000_000_000))
        sock.close()
        # a P-DATA-TF that declares ~2 GB, from an allowed AE after a real negotiation
        sock = connect(daemon.port, "127.0.0.2")
        sock.sendall(associate_rq(calling="ECHOSCU"))
        assert sock.recv(1) == bytes([A_ASSOCIATE_AC]), "the association was not accepted"
        pdata_taken, pdata_s = stream_zeros(sock, struct.pack(">BBL", 0x04, 0, 2_000_000_000))
        sock.close()
        latency = timed_echo(daemon.port)
    after = memory_mb(daemon.proc.pid)["own_rss"]
    print(f"\nhuge PDUs: RSS {before:.0f} MB before, peak {rss.peak:.0f} MB during, {after:.0f} MB "
          f"after; the daemon took {rq_taken >> 20} MB of the 3,000 MB A-ASSOCIATE-RQ "
          f"(closed in {rq_s:.2f} s) and {pdata_taken >> 20} MB of the 2 GB P-DATA-TF "
          f"(closed in {pdata_s:.2f} s); C-ECHO after: {latency and round(latency, 3)} s")
    assert rss.peak - before < GROWTH_MB, f"memory grew from {before:.0f} to {rss.peak:.0f} MB"
    assert rq_taken < STREAM_MB << 20 and pdata_taken < STREAM_MB << 20
    assert latency is not None, "C-ECHO from an allowed AE was not answered after the attack"


class Drip(threading.Thread):
    """A slowloris connection from ``source``: the first ``first`` bytes of ``pdu``, then the
    rest one byte every ``every_s`` until the daemon closes the connection; ``lifetime`` is how
    long the daemon let it live."""

    def __init__(self, port: int, source: str, pdu: bytes, first: int, every_s: float = 0.4,
                 give_up_s: float = 30) -> None:
        super().__init__(daemon=True)
        self.port, self.source, self.pdu, self.first = port, source, pdu, first
        self.every_s, self.give_up_s = every_s, give_up_s
        self.lifetime: float | None = None
        self.local: tuple[str, int] | None = None

    def run(self) -> None:
        sock = connect(self.port, self.source)
        self.local = sock.getsockname()
        start = time.monotonic()
        try:
            alive, at = send_quietly(sock, self.pdu[:self.first]), self.first
            while alive and at < len(self.pdu) and time.monotonic() - start < self.give_up_s:
                sock.settimeout(self.every_s)
                try:
                    alive = sock.recv(1) != b""
                except TimeoutError:
                    alive, at = send_quietly(sock, self.pdu[at:at + 1]), at + 1
                except OSError:
                    alive = False
            if not alive:
                self.lifetime = time.monotonic() - start
        finally:
            sock.close()


def test_slowloris_takes_no_slot_and_is_closed_within_the_request_timeout(daemon: Daemon) -> None:
    rq = associate_rq(calling="ECHOSCU")
    # more than max_associations (2) and than max_pending_per_address (4), from another host:
    # half send a whole 6-byte header, half three bytes of one; then a byte every 0.4 s
    drips = [Drip(daemon.port, "127.0.0.3", rq, 6 if n % 2 else 3) for n in range(12)]
    for d in drips:
        d.start()
    time.sleep(0.5)
    latency = timed_echo(daemon.port)  # during the attack, from the PACS's own address
    for d in drips:
        d.join(ACSE_TIMEOUT_S + SLACK_S + 10)
    lifetimes = sorted(d.lifetime for d in drips if d.lifetime is not None)
    print(f"\nslowloris: 12 dripping connections; C-ECHO during the attack answered in "
          f"{latency and round(latency, 3)} s; the daemon closed them after "
          f"{', '.join(f'{t:.2f}' for t in lifetimes)} s (node.acse_timeout_s {ACSE_TIMEOUT_S})")
    assert latency is not None, "C-ECHO from an allowed AE was refused during the attack"
    assert len(lifetimes) == len(drips), "a dripping connection was never closed"
    assert max(lifetimes) < ACSE_TIMEOUT_S + SLACK_S
    assert_logged_at_most_once(daemon, [d.local for d in drips if d.local is not None])


def closed_after(socks: list[tuple[object, float]], within_s: float) -> list[float | None]:
    """For each (socket, time it connected): seconds until the daemon closed it (None: it was
    still open ``within_s`` after the first connect)."""
    sel = selectors.DefaultSelector()
    for n, (sock, _) in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, n)  # type: ignore[arg-type]
    result: list[float | None] = [None] * len(socks)
    deadline = socks[0][1] + within_s
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            sock, opened = socks[key.data]
            try:
                data = sock.recv(4096)  # type: ignore[attr-defined]
            except OSError:  # reset
                data = b""
            if not data:
                result[key.data] = time.monotonic() - opened
                sel.unregister(sock)  # type: ignore[arg-type]
    sel.close()
    return result


def test_idle_connections_beyond_the_pending_caps_lock_no_sender_out(daemon: Daemon) -> None:
    # beyond max_pending_per_address (4: six from .4) and max_pending_connections (8: 12 in all)
    sources = ["127.0.0.4"] * 6 + ["127.0.0.5"] * 3 + ["127.0.0.6"] * 3
    idle = [(connect(daemon.port, source), time.monotonic()) for source in sources]
    lifetimes: list[float | None] = []
    watch = threading.Thread(target=lambda: lifetimes.extend(
        closed_after(idle, within_s=ACSE_TIMEOUT_S + SLACK_S)))
    watch.start()
    time.sleep(EVICT_AFTER_S + 0.3)  # the oldest pending ones may now make room for a newcomer
    latency = timed_echo(daemon.port)
    watch.join()
    locals_ = [sock.getsockname() for sock, _ in idle]
    for sock, _ in idle:
        sock.close()
    assert_logged_at_most_once(daemon, locals_)
    print(f"\nidle sockets: 12 from 3 hosts; C-ECHO answered in {latency and round(latency, 3)} s "
          f"while they were open; the daemon closed them after "
          f"{', '.join(f'{t:.2f}' for t in lifetimes if t is not None)} s")
    assert latency is not None, "an allowed AE was refused while idle connections were open"
    assert None not in lifetimes, "an idle connection was never closed"
    assert max(lifetimes) < ACSE_TIMEOUT_S + SLACK_S  # type: ignore[type-var]


def test_a_burst_of_legitimate_associations_is_not_mistaken_for_an_attack(receivers) -> None:  # type: ignore[no-untyped-def]
    """A PACS opening every association it may hold at once, from one address (the defaults:
    node.max_associations and node.max_pending_per_address 16): all accepted and served."""
    from concurrent.futures import ThreadPoolExecutor

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    rcv, _ = receivers()
    limit = rcv.config.node.max_associations
    barrier = threading.Barrier(limit)

    def one(_: int) -> bool:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        barrier.wait()
        assoc = ae.associate("127.0.0.1", rcv.port, ae_title="RADTRIAGE")
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and status.Status == 0

    with ThreadPoolExecutor(limit) as pool:
        assert list(pool.map(one, range(limit))) == [True] * limit
