"""Who may send: calling AE titles, the addresses they call from, and DICOM over TLS.

Three gates, each optional and each logged with its reason when it turns a peer away:

* ``node.allowed_calling_aes``: the calling AE title must be listed (pynetdicom rejects others
  at association with *calling AE title not recognised*);
* ``node.calling_hosts``: an AE title listed there must call from one of its addresses, networks
  or host names (rejected the same way, checked here when the A-ASSOCIATE-RQ arrives);
* ``node.tls``: the listening socket speaks TLS 1.2 or newer, optionally requiring a client
  certificate that chains to ``ca_file`` (mutual TLS).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from typing import Iterable

log = logging.getLogger(__name__)


class AccessError(Exception):
    """The access settings cannot be used (a certificate or key that cannot be loaded)."""


def host_matches(address: str, patterns: Iterable[str]) -> bool:
    """Whether the peer ``address`` (an IP) is one of ``patterns``: addresses, CIDR networks or
    host names (resolved now, every address they have counts)."""
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if peer.version == 6 and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    for pattern in patterns:
        try:
            if peer in ipaddress.ip_network(pattern, strict=False):
                return True
            continue
        except ValueError:
            pass  # not an address or network: a host name
        try:
            infos = socket.getaddrinfo(pattern, None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            log.warning("node.calling_hosts: cannot resolve %r: %s", pattern, exc)
            continue
        if any(ipaddress.ip_address(info[4][0].split("%", 1)[0]) == peer for info in infos):
            return True
    return False


def calling_host_refusal(calling_ae: str, address: str, calling_hosts: dict[str, list[str]]
                         ) -> str | None:
    """Why a peer calling as ``calling_ae`` from ``address`` is turned away, or None."""
    hosts = calling_hosts.get(calling_ae)
    if hosts is None or host_matches(address, hosts):
        return None
    return (f"calling AE title {calling_ae!r} is allowed only from {', '.join(hosts)} "
            f"(node.calling_hosts), not from {address}")


class _LazyHandshakeContext(ssl.SSLContext):
    """An SSLContext whose server sockets do the TLS handshake on first read, in the
    association's own thread: pynetdicom wraps accepted sockets in its accept loop, where a
    peer that connects and never speaks would otherwise stall every other connection."""

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,  # type: ignore[override]
                    suppress_ragged_eofs=True, server_hostname=None, session=None):
        if server_side:
            do_handshake_on_connect = False
        return super().wrap_socket(sock, server_side=server_side,
                                   do_handshake_on_connect=do_handshake_on_connect,
                                   suppress_ragged_eofs=suppress_ragged_eofs,
                                   server_hostname=server_hostname, session=session)


def server_ssl_context(tls) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    """The TLS context of the listening socket from ``node.tls``; AccessError naming the file."""
    ctx = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise AccessError(f"node.tls: cannot load cert_file {tls.cert_file} with key_file "
                          f"{tls.key_file}: {exc}") from exc
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise AccessError(f"node.tls: cannot load ca_file {tls.ca_file}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx
