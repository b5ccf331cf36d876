"""Raw DICOM upper-layer PDUs (PS3.8 9.3), built byte for byte, and a raw-socket peer: what the
hostile-network tests and the PDU fuzzer send, including what no well-behaved library would
(lengths that lie, items out of place, PDUs out of order).
"""

from __future__ import annotations

import socket
import struct
import time

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LE = b"1.2.840.10008.1.2"
EXPLICIT_VR_LE = b"1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.8.498.1"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU: type, reserved, 4-byte big-endian length (``length`` to lie about it), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def item(item_type: int, body: bytes, length: int | None = None) -> bytes:
    """A variable item or sub-item: type, reserved, 2-byte length, body."""
    return struct.pack(">BBH", item_type, 0, len(body) if length is None else length) + body


def ae_field(title: str | bytes) -> bytes:
    raw = title.encode() if isinstance(title, str) else title
    return raw[:16].ljust(16, b" ")


def application_context(name: bytes = APPLICATION_CONTEXT) -> bytes:
    return item(0x10, name)


def presentation_context(context_id: int = 1, abstract: bytes = VERIFICATION,
                         syntaxes: tuple[bytes, ...] = (IMPLICIT_VR_LE,)) -> bytes:
    body = bytes([context_id, 0, 0, 0]) + item(0x30, abstract)
    return item(0x20, body + b"".join(item(0x40, ts) for ts in syntaxes))


def user_information(max_length: int = 16384, implementation_uid: bytes = IMPLEMENTATION_UID,
                     extra: bytes = b"") -> bytes:
    return item(0x50, item(0x51, struct.pack(">L", max_length)) + item(0x52, implementation_uid)
                + extra)


def default_items() -> list[bytes]:
    return [application_context(), presentation_context(), user_information()]


def associate_rq(called: str = "RADTRIAGE", calling: str = "ECHOSCU",
                 items: list[bytes] | None = None, version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification in Implicit VR Little Endian by default."""
    body = (struct.pack(">HH", version, 0) + ae_field(called) + ae_field(calling) + bytes(32)
            + b"".join(default_items() if items is None else items))
    return pdu(A_ASSOCIATE_RQ, body)


def c_echo_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set, Implicit VR Little Endian (PS3.7 9.3.5)."""
    def element(group: int, elem: int, value: bytes) -> bytes:
        return struct.pack("<HHL", group, elem, len(value)) + value

    uid = VERIFICATION + (b"\x00" if len(VERIFICATION) % 2 else b"")
    rest = (element(0, 0x0002, uid) + element(0, 0x0100, struct.pack("<H", 0x0030))
            + element(0, 0x0110, struct.pack("<H", message_id))
            + element(0, 0x0800, struct.pack("<H", 0x0101)))
    return element(0, 0x0000, struct.pack("<L", len(rest))) + rest


def p_data(context_id: int, value: bytes, control: int = 0x03) -> bytes:
    """A P-DATA-TF of one PDV; control 0x03: the last fragment of a command."""
    return pdu(P_DATA_TF, struct.pack(">L", len(value) + 2) + bytes([context_id, control]) + value)


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, bytes(4))


def abort() -> bytes:
    return pdu(A_ABORT, bytes(4))


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5) -> socket.socket:
    """A TCP connection to the receiver on this machine, from ``source`` (any 127.x.y.z address
    is this machine too, so a test can play several hosts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False once the peer has closed the connection (reset or broken pipe)."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def read_pdus_until_closed(sock: socket.socket, within_s: float) -> tuple[list[int], bool]:
    """The types of the PDUs the peer sends until it closes the connection, and whether it
    closed within ``within_s`` (False: still open then)."""
    deadline = time.monotonic() + within_s
    buffer = bytearray()
    types: list[int] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return types, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return types, False
        except OSError:  # reset by the peer: closed
            return types, True
        if not chunk:
            return types, True
        buffer += chunk
        while len(buffer) >= 6:
            length = struct.unpack(">L", buffer[2:6])[0]
            if len(buffer) < 6 + length:
                break
            types.append(buffer[0])
            del buffer[:6 + length]


def read_pdu_type(sock: socket.socket, within_s: float) -> int | None:
    """The type of the next whole PDU the peer sends; None if it closes first."""
    sock.settimeout(within_s)
    data = bytearray()
    try:
        while len(data) < 6 or len(data) < 6 + struct.unpack(">L", data[2:6])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return data[0]
