"""The Storage SCP's network edge: pynetdicom's association server with its input bounded before
it is buffered, and connections still negotiating kept apart from negotiated associations.

What pynetdicom 3.0 does, and what this module changes (issue 17, findings 1 and 2):

- **A PDU is read whole, whatever it declares.** ``DULServiceProvider._read_pdu_data`` calls
  ``recv(pdu_length)`` on a blocking socket: a header declaring 3,000 MB had the daemon buffer
  everything sent behind it, and a header followed by a byte drip blocked the reading thread for
  ever. :class:`BoundedDUL` reads every PDU under a cap on its declared length
  (:meth:`NetworkLimits.max_length`) and a total deadline from its first byte
  (``node.pdu_timeout_s``; not a per-``recv`` timeout that each dripped byte would renew). Past
  either it sends an A-ABORT and closes the connection without reading the body.
- **Every TCP connection is an association.** pynetdicom starts an association thread per
  connection and counts them all, negotiated or not, against ``maximum_associations``
  (``acse.py``, local-limit-exceeded): sixteen sockets that never sent a request held every
  slot. :class:`GatedAssociationServer` reads the A-ASSOCIATE-RQ itself, in the connection's
  handler thread, within ``node.acse_timeout_s`` of the connect in total (the TLS handshake
  included) and under ``node.max_request_pdu_size``; it checks that pynetdicom can decode it.
  Only then does the connection get a pynetdicom association (:class:`GatedAssociation`, whose
  DUL replays the request). Connections still waiting for their request are capped per address
  and in total (:class:`PendingConnections`, ``node.max_pending_*``) and hold no slot.
- **``node.max_associations`` counts negotiated associations.** The gate answers a request with
  A-ASSOCIATE-RJ (transient, local limit exceeded) while that many gated associations are
  negotiating or established (:attr:`GatedAssociation.holds_slot`); one that is closing after a
  release, an abort or a rejection holds none. pynetdicom's own count, which includes those, is
  switched off by the receiver (``ae.maximum_associations = UNCOUNTED``).
- **The TLS handshake runs in the connection's thread** under the request deadline, never in the
  accept loop (pynetdicom wraps accepted sockets there).

pynetdicom's ``EVT_CONN_OPEN`` now fires when the request has come: a connection refused before
it never becomes an association and fires no event.

This leans on pynetdicom internals, checked against 3.0.4 (setup.cfg pins >=3.0,<3.1): the DUL's
``_read_pdu_data``, ``_is_transport_event``, ``_decode_pdu`` and ``_recv_pdu``;
``RequestHandler._create_association`` (copied, with our association class); the server's
``_handlers``; ``AE._servers``. tests/unit/test_transport.py, tests/integration/test_pdu_fuzzer.py
and tests/integration/test_hostile_network.py are what to run after an upgrade.

Every connection refused or timed out here is logged once, at WARNING, with the peer's address
(daemon.logs holds back repeats of one kind from one host, with a count); a peer that closes by
itself is logged at DEBUG or INFO. Of what the peer sent only the calling AE title is logged,
with ``%r``, and figures (lengths, types).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from daemon import metrics

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.ae import ApplicationEntity

    from daemon.config import Config

log = logging.getLogger(__name__)

#: A pending connection older than this gives its place to a newcomer when a cap is reached:
#: a sender that speaks DICOM sends its request within a round trip (three with TLS) of its
#: connect, so the oldest pending connection is the likeliest to be an attacker's.
EVICT_AFTER_S = 1.0
#: Declared lengths beyond ``node.max_pdu_size`` still accepted in a P-DATA-TF: some senders count
#: the PDV header in the maximum length.
PDU_SLACK = 256
#: The A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT PDUs have 4 bytes of body (PS3.8 9.3).
FIXED_PDU_MAX = 64
#: Seconds allowed to send a refusal (A-ABORT, A-ASSOCIATE-RJ) before the connection is closed.
ANSWER_TIMEOUT_S = 1.0
#: pynetdicom's ``maximum_associations`` while the gate does the counting.
UNCOUNTED = 1 << 30

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ",
             0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}

# A-ABORT diagnostics, source: DICOM UL service provider (PS3.8 Table 9-26)
ABORT_NOT_SPECIFIED, ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU = 0x00, 0x01, 0x02
ABORT_INVALID_PARAMETER = 0x06


def abort_pdu(diagnostic: int) -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = diagnostic
    return bytes(pdu.encode())


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


#: transient, service provider (presentation), local limit exceeded
REJECT_BUSY = reject_pdu(0x02, 0x03, 0x02)
#: permanent, service provider (ACSE), protocol version not supported
REJECT_PROTOCOL_VERSION = reject_pdu(0x01, 0x02, 0x02)


# -- limits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkLimits:
    """What the node accepts from the network, from ``node.*`` (and ``limits.max_instance_mb``)."""

    max_request_pdu: int = 262_144
    max_pdata_pdu: int = 1_048_576 + PDU_SLACK
    request_timeout_s: float = 30.0
    pdu_timeout_s: float = 30.0
    max_associations: int = 16
    max_pending_per_address: int = 16
    max_pending: int = 64

    @classmethod
    def from_config(cls, config: "Config") -> "NetworkLimits":
        node = config.node
        if node.max_pdu_size:
            pdata = node.max_pdu_size + PDU_SLACK
        else:  # "unlimited": one PDU may carry a whole instance, not more
            pdata = int(config.limits.max_instance_mb * 1024 * 1024) + (1 << 20)
        return cls(max_request_pdu=node.max_request_pdu_size, max_pdata_pdu=pdata,
                   request_timeout_s=node.acse_timeout_s, pdu_timeout_s=node.pdu_timeout_s,
                   max_associations=node.max_associations,
                   max_pending_per_address=node.max_pending_per_address,
                   max_pending=node.max_pending_connections)

    def max_length(self, pdu_type: int, *, awaiting_request: bool = False) -> int | None:
        """The largest length a PDU of ``pdu_type`` may declare; None where that type is not
        acceptable: an unknown type, or anything but an A-ASSOCIATE-RQ or an A-ABORT while the
        request is awaited."""
        if awaiting_request and pdu_type not in (0x01, 0x07):
            return None
        if pdu_type in (0x01, 0x02):
            return self.max_request_pdu
        if pdu_type == 0x04:
            return self.max_pdata_pdu
        if pdu_type in (0x03, 0x05, 0x06, 0x07):
            return FIXED_PDU_MAX
        return None


# -- reading one PDU ---------------------------------------------------------------------------


class PduRefused(Exception):
    """A PDU refused at its header, or not whole by its deadline: ``why % args`` for the log (the
    figures kept apart, so that daemon.logs counts repeats of one kind as one),
    ``diagnostic`` for the A-ABORT sent back."""

    def __init__(self, why: str, args: tuple[object, ...], diagnostic: int) -> None:
        super().__init__(why % args)
        self.why, self.args_, self.diagnostic = why, args, diagnostic


class PeerClosed(Exception):
    """The peer closed (or reset) the connection after ``received`` bytes of a PDU."""

    def __init__(self, received: int) -> None:
        super().__init__(f"closed by the peer after {received} byte(s) of a PDU")
        self.received = received


def pdu_name(pdu_type: int) -> str:
    return PDU_NAMES.get(pdu_type, f"unknown PDU type 0x{pdu_type:02X}")


def error_name(exc: BaseException) -> str:
    """``struct.error``, ``ValueError``: what went wrong, never the value that did it."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def read_pdu(sock: socket.socket, max_length: Callable[[int], int | None], deadline: float,
             late: str, clock: Callable[[], float] = time.monotonic) -> bytes:
    """One whole PDU from ``sock``, or PduRefused: its type not acceptable or its declared
    length over ``max_length(type)`` (nothing of the body read), or not all of it here by
    ``deadline`` (``late`` names the limit for the log: "no whole PDU within ...")."""
    header = _recv_exactly(sock, 6, deadline, late, clock)
    pdu_type, _, length = struct.unpack(">BBL", header)
    cap = max_length(pdu_type)
    if cap is None and pdu_type in PDU_NAMES:
        raise PduRefused("%s where it is not expected", (pdu_name(pdu_type),),
                         ABORT_UNEXPECTED_PDU)
    if cap is None:
        raise PduRefused("unknown PDU type 0x%02X", (pdu_type,), ABORT_UNRECOGNIZED_PDU)
    if length > cap:
        raise PduRefused("%s declaring %d bytes, more than the %d accepted",
                         (pdu_name(pdu_type), length, cap), ABORT_INVALID_PARAMETER)
    try:
        return bytes(header + _recv_exactly(sock, length, deadline, late, clock))
    except PeerClosed as exc:
        raise PeerClosed(6 + exc.received) from None


def _recv_exactly(sock: socket.socket, n: int, deadline: float, late: str,
                  clock: Callable[[], float]) -> bytearray:
    data = bytearray()
    while len(data) < n:
        left = deadline - clock()
        if left <= 0:
            raise PduRefused("%s (%d of %d bytes)", (late, len(data), n), ABORT_NOT_SPECIFIED)
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(data), 1 << 16))
        except TimeoutError:
            continue  # the loop raises PduRefused with the figures
        except OSError as exc:  # reset, or a TLS record error: the connection is gone
            raise PeerClosed(len(data)) from exc
        if not chunk:
            raise PeerClosed(len(data))
        data += chunk
    return data


def close_connection(sock: socket.socket, answer: bytes | None = None) -> None:
    """Send ``answer`` (an A-ABORT or A-ASSOCIATE-RJ) if the peer will take it, then close."""
    try:
        if answer:
            sock.settimeout(ANSWER_TIMEOUT_S)
            sock.sendall(answer)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # the peer went first, or does not read: nothing more to tell it
        log.debug("closing a connection: %s", type(exc).__name__)
    finally:
        sock.close()


def _interrupt(sock: Any) -> None:
    """Wake the thread blocked reading ``sock`` (it sees the connection end, then closes it).
    ``socket.socket.shutdown`` even on a TLS socket: the SSLSocket method would drop its TLS
    state under the reading thread."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError as exc:  # already closed
        log.debug("interrupting a pending connection: %s", type(exc).__name__)


# -- connections that have not sent their request ---------------------------------------------


@dataclass
class Admission:
    """What :meth:`PendingConnections.admit` decided: whether the newcomer is in, the pending
    connections it displaces (to be closed), and why, when something was refused."""

    admitted: bool
    evicted: list[Hashable] = field(default_factory=list)
    reason: str | None = None


class PendingConnections:
    """Connections that have not yet delivered their A-ASSOCIATE-RQ, capped per address and in
    total: the bookkeeping only (the server closes what it decides).

    When a cap is reached, the newcomer takes the place of the oldest connection of that pool
    (its address's, or all) if that one has been pending for more than ``evict_after_s``;
    otherwise the newcomer is refused. Refusing always would let a few slow sockets lock every
    sender out for the whole request timeout, which is finding 2 one level down; evicting always
    would let a burst of connects from one sender close its own before they could speak.
    """

    def __init__(self, per_address: int, total: int, *, evict_after_s: float = EVICT_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_address, self.total = per_address, total
        self.evict_after_s, self.clock = evict_after_s, clock
        self._lock = threading.Lock()
        self._pending: dict[Hashable, tuple[str, float]] = {}  # oldest first
        self._evicted: dict[Hashable, tuple[str, float]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def connections(self) -> list[Hashable]:
        with self._lock:
            return list(self._pending)

    def admit(self, conn: Hashable, address: str) -> Admission:
        with self._lock:
            now = self.clock()
            same = [c for c, (a, _) in self._pending.items() if a == address]
            if len(same) >= self.per_address:
                pool, why = same, f"node.max_pending_per_address ({self.per_address}) reached"
            elif len(self._pending) >= self.total:
                pool, why = list(self._pending), f"node.max_pending_connections ({self.total}) reached"
            else:
                pool, why = [], ""
            evicted: list[Hashable] = []
            if pool:
                oldest = pool[0]
                age = now - self._pending[oldest][1]
                if age <= self.evict_after_s:
                    return Admission(False, [], why)
                del self._pending[oldest]
                self._evicted[oldest] = (why, age)
                evicted.append(oldest)
            self._pending[conn] = (address, now)
            return Admission(True, evicted)

    def finish(self, conn: Hashable) -> tuple[str, float] | None:
        """``conn`` is no longer pending (its request came, or it ended); if it was evicted, why
        and after how many seconds pending."""
        with self._lock:
            self._pending.pop(conn, None)
            return self._evicted.pop(conn, None)


# -- the association, once its request is here ----------------------------------------------


class BoundedDUL(DULServiceProvider):
    """pynetdicom's DUL with :func:`read_pdu` in place of its unbounded read, starting with the
    A-ASSOCIATE-RQ the gate already read (``replay``)."""

    def __init__(self, assoc: Association, limits: NetworkLimits, replay: bytes) -> None:
        super().__init__(assoc)
        self._limits = limits
        self._replay: bytes | None = replay
        machine, act = self.state_machine, self.state_machine.do_action

        def do_action(event: str) -> None:
            # Once the association has ended (Sta13: an A-ABORT sent, or a release answered,
            # only the connection's close awaited), the association thread may still hand the
            # DUL a primitive it decided on a moment earlier (a release response, an abort):
            # the state table has no transition for it (PS3.8 9.2), pynetdicom's state machine
            # raises InvalidEventError outside any handler and its reactor thread dies (the
            # PDU fuzzer provokes it). Nothing is left to send it to: drop it.
            if machine.current_state == "Sta13" and (event, "Sta13") not in TRANSITION_TABLE:
                log.debug("dropped %s: the association had already ended", event)
                return
            act(event)

        machine.do_action = do_action  # type: ignore[method-assign]

    def _is_transport_event(self) -> bool:
        if self._replay is not None:
            data, self._replay = self._replay, None
            self._queue_pdu(data)
            return True
        return super()._is_transport_event()

    def _read_pdu_data(self) -> None:
        wrapper = self.socket
        sock = wrapper.socket if wrapper is not None else None
        if sock is None:
            self.event_queue.put("Evt17")
            return
        now = time.monotonic()
        deadline = now + self._limits.pdu_timeout_s
        if self.state_machine.current_state == "Sta13" and self.artim_timer.timeout is not None:
            # closing: what the peer still sends is read only until the ARTIM timer runs out
            deadline = min(deadline, now + max(self.artim_timer.remaining, 0.0))
        late = f"no whole PDU within node.pdu_timeout_s ({self._limits.pdu_timeout_s:g} s)"
        try:
            data = read_pdu(sock, self._limits.max_length, deadline, late)
        except PeerClosed:
            self.event_queue.put("Evt17")  # as pynetdicom: the state machine ends the association
            return
        except PduRefused as exc:
            self._refuse(exc)
            return
        sock.settimeout(self._limits.pdu_timeout_s)  # a send the peer does not take fails too
        self._queue_pdu(data)

    def _queue_pdu(self, data: bytes) -> None:
        """Decode a whole PDU and queue its event: the tail of pynetdicom's ``_read_pdu_data``."""
        try:
            pdu, event = self._decode_pdu(bytearray(data))
        except Exception as exc:  # pynetdicom's decoders raise whatever the bytes provoke; its
            # own DUL catches Exception here too (READ_PDU_EXC_F) and answers Evt19, as here
            req = self.assoc.requestor
            log.warning("aborting the association from %r at %s:%s: an undecodable %s (%s)",
                        (req.ae_title or "").strip(), req.address, req.port, pdu_name(data[0]),
                        error_name(exc))
            metrics.CONNECTIONS_REFUSED.labels("pdu").inc()
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _refuse(self, exc: PduRefused) -> None:
        req = self.assoc.requestor
        log.warning("closed the association from %r at %s:%s: " + exc.why,
                    (req.ae_title or "").strip(), req.address, req.port, *exc.args_)
        metrics.CONNECTIONS_REFUSED.labels("pdu").inc()
        wrapper = self.socket
        if wrapper is not None and wrapper.socket is not None:
            wrapper.socket.settimeout(ANSWER_TIMEOUT_S)
            wrapper.send(abort_pdu(exc.diagnostic))  # pynetdicom's send: a failure is Evt17
            wrapper.close()  # Evt17: the state machine ends the association (A-P-ABORT)


class GatedAssociation(Association):
    """A pynetdicom acceptor whose DUL is :class:`BoundedDUL`, started with its request read."""

    def __init__(self, ae: "ApplicationEntity", request: bytes, limits: NetworkLimits) -> None:
        super().__init__(ae, MODE_ACCEPTOR)
        self.dul = BoundedDUL(self, limits, replay=request)
        # Association.__init__ gave the timeouts to the DUL it made: give them to this one
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self._ended = False

    @property
    def holds_slot(self) -> bool:
        """Negotiating or established: counted against ``node.max_associations``. An
        association is over for the count once pynetdicom kills it (released, aborted, rejected,
        timed out or its connection gone), even while its threads still close the connection."""
        return self.is_alive() and not self._ended

    def kill(self) -> None:
        self._ended = True
        super().kill()


# -- the server ---------------------------------------------------------------------------------


@dataclass
class _Refusal:
    """Why a connection is closed before its association (``why % args``), and what it is told."""

    why: str
    args: tuple[object, ...]
    answer: bytes | None = None
    level: int = logging.WARNING


class GatedRequestHandler(RequestHandler):
    """One connection, in its own thread: read the A-ASSOCIATE-RQ, then hand over to pynetdicom."""

    server: "GatedAssociationServer"

    def handle(self) -> None:
        request = self._read_request()
        if request is None:
            return
        limits = self.server.limits
        with self.server.slots:
            busy = self.server.slots_held() >= limits.max_associations
            if not busy:
                self._request_pdu = request
                super().handle()  # pynetdicom: our association, EVT_CONN_OPEN, start
        if busy:
            calling = request[26:42].decode("ascii", "replace").strip()
            log.warning("rejected association from %r at %s:%s: node.max_associations (%d) "
                        "reached", calling, *self.client_address[:2], limits.max_associations)
            metrics.CONNECTIONS_REFUSED.labels("busy").inc()
            close_connection(self.request, REJECT_BUSY)

    def _read_request(self) -> bytes | None:
        try:
            request, refusal = self._receive()
        finally:
            evicted = self.server.pending.finish(self.request)
        if evicted is not None:
            request, refusal = None, _Refusal("closed before its A-ASSOCIATE-RQ: %s (it had been "
                                              "pending %.1f s)", evicted)
        if refusal is not None:
            log.log(refusal.level, "connection from %s:%s: " + refusal.why,
                    *self.client_address[:2], *refusal.args)
            if refusal.level >= logging.WARNING:  # not a peer that just went away
                metrics.CONNECTIONS_REFUSED.labels("request").inc()
            close_connection(self.request, refusal.answer)
            return None
        return request

    def _receive(self) -> tuple[bytes | None, _Refusal | None]:
        sock, limits = self.request, self.server.limits
        deadline = time.monotonic() + limits.request_timeout_s
        within = f"within node.acse_timeout_s ({limits.request_timeout_s:g} s) of the connect"
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.do_handshake()
            data = read_pdu(sock, lambda t: limits.max_length(t, awaiting_request=True),
                            deadline, f"no whole A-ASSOCIATE-RQ {within}")
        except TimeoutError:  # the TLS handshake
            return None, _Refusal("no TLS handshake %s", (within,))
        except PduRefused as exc:
            return None, _Refusal(exc.why, exc.args_, abort_pdu(exc.diagnostic))
        except PeerClosed as exc:
            return None, _Refusal("closed by the peer after %d byte(s), before an A-ASSOCIATE-RQ",
                                  (exc.received,),
                                  level=logging.INFO if exc.received else logging.DEBUG)
        except OSError as exc:  # ssl.SSLError and resets during the handshake
            return None, _Refusal("TLS handshake failed (%s)", (error_name(exc),))
        if data[0] == 0x07:
            return None, _Refusal("aborted by the peer before an A-ASSOCIATE-RQ", (),
                                  level=logging.INFO)
        return data, _check_request(data)

    def _create_association(self) -> Association:
        """pynetdicom's ``RequestHandler._create_association`` with a :class:`GatedAssociation`."""
        assoc = GatedAssociation(self.ae, self._request_pdu, self.server.limits)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"  # what pynetdicom counts
        sock = AssociationSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)
        self.request.settimeout(self.server.limits.pdu_timeout_s)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote

        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:  # type: ignore[misc]
                    assoc.bind(event, handler, args)
        return assoc


def _check_request(data: bytes) -> _Refusal | None:
    """A whole A-ASSOCIATE-RQ pynetdicom can take: decodable, of protocol version 1 (the
    acceptor's DUL would answer any other with A-ASSOCIATE-RJ and then wait the ACSE timeout for
    a request that never comes, holding a slot), with its maximum PDU length."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(data)
        pdu.to_primitive()
    except Exception as exc:  # pynetdicom's decoders raise whatever the bytes provoke (its own
        # DUL catches Exception here); the reason names the type only, never the bytes
        return _Refusal("an A-ASSOCIATE-RQ that cannot be decoded (%s)", (error_name(exc),),
                        abort_pdu(ABORT_INVALID_PARAMETER))
    if pdu.protocol_version != 0x0001:
        return _Refusal("an A-ASSOCIATE-RQ of protocol version 0x%04X", (pdu.protocol_version,),
                        REJECT_PROTOCOL_VERSION)
    info = pdu.user_information
    if info is None or info.maximum_length is None:
        # mandatory (PS3.8 9.3.2, D.1); pynetdicom would accept it and fail on it later
        return _Refusal("an A-ASSOCIATE-RQ without a User Information item and its Maximum "
                        "Length sub-item", (), abort_pdu(ABORT_INVALID_PARAMETER))
    return None


class GatedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the gate in front of every association."""

    daemon_threads = True   # a connection's thread never holds the process
    block_on_close = False  # and stopping never waits for one (pending ones are closed)

    def __init__(self, ae: "ApplicationEntity", address: tuple[str, int], ae_title: str,
                 contexts: list, ssl_context: ssl.SSLContext | None = None,
                 evt_handlers: list | None = None, *, limits: NetworkLimits) -> None:
        self.limits = limits
        self.pending = PendingConnections(limits.max_pending_per_address, limits.max_pending)
        self.slots = threading.Lock()
        # socketserver listens with a backlog of 5: a burst of connects beyond it waits for the
        # SYN retransmission (1 s); the pending caps, not the backlog, are the limit here
        self.request_queue_size = max(limits.max_pending + limits.max_associations, 16)
        super().__init__(ae, address, ae_title, contexts, ssl_context,
                         evt_handlers=evt_handlers, request_handler=GatedRequestHandler)

    def slots_held(self) -> int:
        return sum(1 for a in self.active_associations
                   if isinstance(a, GatedAssociation) and a.holds_slot)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; a TLS socket is wrapped without its handshake, which the connection's thread
        does under the request deadline."""
        assert self.socket is not None
        sock, address = self.socket.accept()
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept loop: admit the connection among the pending ones (or not), then give
        it a thread."""
        admission = self.pending.admit(request, str(client_address[0]))
        for conn in admission.evicted:
            _interrupt(conn)  # its thread logs why and closes it
        if not admission.admitted:
            log.warning("connection from %s:%s refused: %s", *client_address[:2],
                        admission.reason)
            metrics.CONNECTIONS_REFUSED.labels("pending").inc()
            close_connection(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError as exc:  # no thread to be had
            self.pending.finish(request)
            log.warning("connection from %s:%s refused: %s", *client_address[:2], exc)
            metrics.CONNECTIONS_REFUSED.labels("pending").inc()
            close_connection(request)

    def server_close(self) -> None:
        super().server_close()
        for conn in self.pending.connections():
            _interrupt(conn)


def start_server(ae: "ApplicationEntity", address: tuple[str, int], limits: NetworkLimits, *,
                 evt_handlers: list, ssl_context: ssl.SSLContext | None = None
                 ) -> GatedAssociationServer:
    """pynetdicom's ``AE.start_server(address, block=False, ...)``, with the gated server."""
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                            server_class=GatedAssociationServer, limits=limits)
    thread = threading.Thread(target=make_target(server.serve_forever),
                              name=f"AcceptorServer@{time.strftime('%Y%m%d%H%M%S')}", daemon=True)
    thread.start()
    ae._servers.append(server)  # AE.shutdown() stops it; its shutdown() takes it off again
    return server
