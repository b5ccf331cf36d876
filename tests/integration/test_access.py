"""Who gets in: calling AE titles, calling addresses, DICOM over TLS (DCMTK's storescu with
``--enable-tls`` against a CA the test makes), and the instance size limit.

The receiver runs in-process on a free port; every refusal must name its reason in the log, and
the next, legitimate association must still work.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from sqlalchemy import func, select

from daemon.access import calling_host_refusal, host_matches
from db import Database, Instance
from tests.conftest import write_study
from tests.integration.conftest import storescu, wait_for
from tests.pki import PKI, pki  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver(receivers):  # type: ignore[no-untyped-def]
    return receivers


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return write_study(tmp_path / "in", views=2, rows=64, columns=64)


def _associate(port: int, calling: str = "PACS"):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="RADTRIAGE")


def _store(port: int, files: list[Path], calling: str = "PACS") -> list[int]:
    assoc = _associate(port, calling)
    assert assoc.is_established, "association not accepted"
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def _stored(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)))


# -- pure rules ----------------------------------------------------------------------------------


def test_host_matching_by_address_network_and_name() -> None:
    assert host_matches("10.0.0.5", ["10.0.0.5"])
    assert host_matches("10.0.0.77", ["192.168.1.1", "10.0.0.0/24"])
    assert not host_matches("10.0.1.5", ["10.0.0.0/24"])
    assert host_matches("127.0.0.1", ["localhost"])
    assert host_matches("::ffff:10.0.0.5", ["10.0.0.5"])  # an IPv4 peer on a dual-stack socket
    assert not host_matches("127.0.0.1", ["no-such-host.invalid"])
    assert not host_matches("not an address", ["0.0.0.0/0"])
    assert calling_host_refusal("PACS", "10.0.0.9", {"PACS": ["10.0.0.5"]}) == (
        "calling AE title 'PACS' is allowed only from 10.0.0.5 (node.calling_hosts), not from 10.0.0.9")
    assert calling_host_refusal("OTHER", "10.0.0.9", {"PACS": ["10.0.0.5"]}) is None


# -- calling AE titles and addresses --------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_with_the_reason_logged(receiver, study, caplog) -> None:
    r, db = receiver(node={"allowed_calling_aes": ["PACS"]})
    with caplog.at_level(logging.WARNING, logger="daemon.receiver"):
        assoc = _associate(r.port, calling="INTRUDER")
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (0x01, 0x03)
        time.sleep(0.2)
    assert any("'INTRUDER'" in m and "not in node.allowed_calling_aes" in m for m in caplog.messages)
    assert _store(r.port, study, calling="PACS") == [0, 0]  # the allowed one still gets in
    assert _stored(db) == 2


def test_calling_ae_must_call_from_its_configured_host(receiver, study, caplog) -> None:
    r, db = receiver(node={"allowed_calling_aes": ["PACS", "ORTHANC", "LAPTOP"],
                           "calling_hosts": {"PACS": ["10.11.12.13"], "ORTHANC": ["localhost"],
                                             "LAPTOP": ["127.0.0.0/8"]}})
    with caplog.at_level(logging.WARNING, logger="daemon.receiver"):
        assoc = _associate(r.port, calling="PACS")  # PACS from 127.0.0.1: not its address
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.diagnostic == 0x03
    assert any("'PACS' is allowed only from 10.11.12.13" in m and "not from 127.0.0.1" in m
               for m in caplog.messages)
    assert _stored(db) == 0
    assert _store(r.port, study[:1], calling="ORTHANC") == [0]  # by host name
    assert _store(r.port, study[1:], calling="LAPTOP") == [0]  # by network
    assert _stored(db) == 2


# -- DICOM over TLS -------------------------------------------------------------------------------


def _tls_args(pki: PKI, *, client_cert: bool = True) -> list[str]:
    own = ["--enable-tls", str(pki.client_key), str(pki.client_cert)] if client_cert \
        else ["--anonymous-tls"]
    return [*own, "--add-cert-file", str(pki.ca), "--require-peer-cert"]


def test_storescu_over_tls_with_mutual_authentication(receiver, study, pki: PKI, caplog) -> None:
    r, db = receiver(node={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                                   "ca_file": str(pki.ca), "require_client_cert": True}})
    proc = storescu(r.port, study, extra=_tls_args(pki))
    assert "Received Store Response (Success)" in proc.stdout + proc.stderr
    assert _stored(db) == 2

    # no client certificate: the handshake fails, nothing is stored, the server goes on
    anon = storescu(r.port, study, extra=_tls_args(pki, client_cert=False), check=False)
    assert anon.returncode != 0
    # plain DICOM to the TLS port: refused at the handshake as well
    plain = storescu(r.port, study, check=False)
    assert plain.returncode != 0
    # a peer that connects and never speaks does not hold up anyone else
    with socket.create_connection(("127.0.0.1", r.port)):
        again = write_study(study[0].parent.parent / "again", views=1, rows=64, columns=64)
        storescu(r.port, again, extra=_tls_args(pki))
    assert _stored(db) == 3


def test_storescu_must_trust_our_certificate(receiver, study, pki: PKI) -> None:
    """The other side of TLS: a client that trusts only another CA refuses us."""
    r, db = receiver(node={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}})
    untrusting = storescu(r.port, study, check=False,
                          extra=["--anonymous-tls", "--add-cert-file", str(pki.other_ca),
                                 "--require-peer-cert"])
    assert untrusting.returncode != 0
    assert _stored(db) == 0
    storescu(r.port, study, extra=["--anonymous-tls", "--add-cert-file", str(pki.ca),
                                   "--require-peer-cert"])
    assert _stored(db) == 2


# -- instance size --------------------------------------------------------------------------------


def test_instance_over_the_size_limit_is_refused_and_the_next_goes_on(receiver, tmp_path, caplog) -> None:
    small = write_study(tmp_path / "small", views=1, rows=64, columns=64)
    big = write_study(tmp_path / "big", views=1, rows=400, columns=400)  # ~320 kB
    huge = write_study(tmp_path / "huge", views=1, rows=1200, columns=1200)  # ~2.9 MB
    r, db = receiver(limits={"max_instance_mb": 0.1})
    with caplog.at_level(logging.INFO):
        assert _store(r.port, big) == [0xA700]
        # far over the limit: the connection is closed while the data set still arrives
        assoc = _associate(r.port)
        assert assoc.is_established
        status = assoc.send_c_store(pydicom.dcmread(huge[0]))
        assert not status or "Status" not in status  # no answer: the connection was closed
        wait_for(lambda: not assoc.is_established, 10, "the association to end")
        assoc.abort()
    assert any("limits.max_instance_mb" in m and "more than" in m for m in caplog.messages)
    assert any("passed limits.max_instance_mb" in m for m in caplog.messages)
    assert _stored(db) == 0
    assert _store(r.port, small) == [0]
    assert _stored(db) == 1


# -- association and PDU limits -------------------------------------------------------------------


def test_associations_over_the_limit_are_refused_as_busy_and_the_pdu_size_is_ours(
        receiver, study, caplog) -> None:
    r, db = receiver(node={"max_associations": 2, "max_pdu_size": 65536})
    held = [_associate(r.port), _associate(r.port)]
    assert all(a.is_established for a in held)
    assert all(a.acceptor.maximum_length == 65536 for a in held)  # what we told the sender
    with caplog.at_level(logging.WARNING, logger="daemon.receiver"):
        third = _associate(r.port)
        assert third.is_rejected
        # transient, service provider (presentation), local limit exceeded (PS3.8 9.3.4)
        prim = third.acceptor.primitive
        assert (prim.result, prim.result_source, prim.diagnostic) == (0x02, 0x03, 0x02)
        time.sleep(0.2)
    assert any("node.max_associations (2) reached" in m for m in caplog.messages)
    for a in held:
        a.release()
    wait_for(lambda: not r.ae.active_associations, 10, "the held associations to end")
    assert _store(r.port, study) == [0, 0]  # room again
    assert _stored(db) == 2


def test_unreadable_tls_files_stop_start_up_naming_the_file(tmp_path, pki: PKI) -> None:
    from daemon.access import AccessError, server_ssl_context
    from daemon.config import NodeTLSConfig

    missing = tmp_path / "nope.pem"
    with pytest.raises(AccessError, match=f"node.tls: cannot load cert_file {missing}"):
        server_ssl_context(NodeTLSConfig(cert_file=missing, key_file=pki.server_key))
    with pytest.raises(AccessError, match=f"node.tls: cannot load ca_file {missing}"):
        server_ssl_context(NodeTLSConfig(cert_file=pki.server_cert, key_file=pki.server_key,
                                         ca_file=missing))
