"""dicom_io.destinations: C-STORE over TLS to DCMTK's storescp, STOW-RS to a real Orthanc,
return-to-sender, and the fake.

The TLS tests make a throwaway CA with the openssl CLI (server and client certificates signed
by it, and a second CA nobody trusts); storescp runs with ``+tls key cert``.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest
from pydicom import dcmread

from dicom_io.destinations import (
    DicomStore,
    DicomWebStore,
    FakeDestination,
    Origin,
    ReturnToSender,
    TLSOptions,
)
from dicom_io.errors import SendError
from tests.conftest import free_port, write_study
from tests.integration.conftest import listening, need, wait_for
from tests.orthanc import OrthancServer, orthanc_server  # noqa: F401  (the fixture)
from tests.pki import PKI, pki  # noqa: F401  (the fixture)

ORIGIN = Origin(ae_title="MODALITY", host="127.0.0.1")


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    [path] = write_study(tmp_path / "study", views=1, rows=64, columns=64)
    return path


# -- the fake and the pure parts -----------------------------------------------------------------


def test_fake_records_paths_and_origins(instance: Path) -> None:
    fake = FakeDestination()
    fake.send(instance)
    fake.send(instance, origin=ORIGIN)
    assert fake.sent == [instance, instance]
    assert fake.origins == [None, ORIGIN]
    fake.down = True
    with pytest.raises(SendError, match="fake: down"):
        fake.send(instance, origin=ORIGIN)
    assert len(fake.sent) == len(fake.origins) == 2


def test_return_to_sender_without_origin_fails(instance: Path) -> None:
    dest = ReturnToSender(name="back", port=104)
    with pytest.raises(SendError, match="back: the study's sender is not known"):
        dest.send(instance)


def test_return_to_sender_addresses_the_origin() -> None:
    dest = ReturnToSender(name="back", port=11112, calling_ae_title="TRIAGE", timeout_s=5,
                          host_by_ae={"CT1": ("10.0.0.7", 4006)})
    store = dest.store_for(Origin(ae_title="CR1 ", host="10.0.0.5"))
    assert (store.ae_title, store.host, store.port) == ("CR1", "10.0.0.5", 11112)
    assert (store.calling_ae_title, store.timeout_s, store.name) == ("TRIAGE", 5, "back")
    store = dest.store_for(Origin(ae_title="CT1", host="10.0.0.5"))
    assert (store.ae_title, store.host, store.port) == ("CT1", "10.0.0.7", 4006)
    fixed = ReturnToSender(name="back", port=104, ae_title="PACS")
    assert fixed.store_for(ORIGIN).ae_title == "PACS"


def test_unloadable_certificate_fails_when_the_store_is_built(tmp_path: Path) -> None:
    tls = TLSOptions(cert_file=tmp_path / "missing.pem", key_file=tmp_path / "missing.key")
    with pytest.raises(SendError, match="cannot load cert_file .*missing.pem"):
        DicomStore(name="pacs", ae_title="PACS", host="127.0.0.1", port=104, tls=tls)
    with pytest.raises(SendError, match="cannot load ca_file"):
        ReturnToSender(name="back", port=104, tls=TLSOptions(ca_file=tmp_path / "missing.pem"))
    with pytest.raises(SendError, match="ca_file .* is not a file"):
        DicomWebStore(name="web", url="https://pacs.example/dicom-web", ca_file=tmp_path / "x.pem")


# -- certificates and a TLS storescp -------------------------------------------------------------


class TLSStoreSCP:
    """storescp with TLS; ``client_ca`` given: it requires a client certificate signed by it."""

    def __init__(self, folder: Path, pki: PKI, *, client_ca: Path | None = None,
                 ae_title: str = "PACS") -> None:
        self.folder, self.port, self.ae_title = folder, free_port(), ae_title
        self.received = folder / "received"
        self.received.mkdir(parents=True)
        peer = ["+cf", str(client_ca), "-rc"] if client_ca else ["-ic"]
        self.log_path = folder / "storescp.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [need("storescp"), "-d", "-aet", ae_title, "-od", str(self.received), "-uf",
                 "+tls", str(pki.server_key), str(pki.server_cert), *peer, str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or listening(self.port), 10,
                 "storescp to listen")
        assert self.proc.poll() is None, self.log()

    def files(self) -> list[Path]:
        return sorted(p for p in self.received.iterdir() if p.is_file())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def tls_scp(tmp_path: Path, pki: PKI) -> Iterator[Callable[..., TLSStoreSCP]]:
    started: list[TLSStoreSCP] = []

    def start(**kwargs) -> TLSStoreSCP:  # type: ignore[no-untyped-def]
        scp = TLSStoreSCP(tmp_path / f"scp{len(started) + 1}", pki, **kwargs)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def tls_store(scp: TLSStoreSCP, tls: TLSOptions) -> DicomStore:
    return DicomStore(name="pacs", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port,
                      timeout_s=10, tls=tls)


def assert_received(scp: TLSStoreSCP, sent: Path) -> None:
    [got] = wait_for(scp.files, 10, "storescp to write the file")  # type: ignore[misc]
    assert dcmread(got).SOPInstanceUID == dcmread(sent).SOPInstanceUID


# -- C-STORE over TLS ----------------------------------------------------------------------------


@pytest.mark.integration
def test_tls_store_verifies_the_peer_against_our_ca(tls_scp, pki: PKI, instance: Path) -> None:
    scp = tls_scp()
    tls_store(scp, TLSOptions(ca_file=pki.ca)).send(instance)
    assert_received(scp, instance)


@pytest.mark.integration
def test_tls_store_to_a_peer_signed_by_another_ca_fails(tls_scp, pki: PKI, instance: Path) -> None:
    scp = tls_scp()
    with pytest.raises(SendError, match="TLS handshake failed: .*certificate verify failed") as err:
        tls_store(scp, TLSOptions(ca_file=pki.other_ca)).send(instance)
    assert "pacs (PACS@127.0.0.1:" in str(err.value)
    assert scp.files() == []


@pytest.mark.integration
def test_tls_store_checks_the_name_in_the_peer_certificate(tls_scp, pki: PKI,
                                                            instance: Path) -> None:
    scp = tls_scp()
    wrong_name = TLSOptions(ca_file=pki.ca, server_hostname="pacs.example")
    with pytest.raises(SendError, match="certificate verify failed: Hostname mismatch"):
        tls_store(scp, wrong_name).send(instance)
    unchecked = TLSOptions(ca_file=pki.ca, server_hostname="pacs.example", check_hostname=False)
    tls_store(scp, unchecked).send(instance)
    assert_received(scp, instance)


@pytest.mark.integration
def test_tls_store_presents_our_client_certificate(tls_scp, pki: PKI, instance: Path) -> None:
    scp = tls_scp(client_ca=pki.ca)
    with pytest.raises(SendError, match="pacs .*TLS") as err:
        tls_store(scp, TLSOptions(ca_file=pki.ca)).send(instance)
    assert "certificate required" in str(err.value) or "handshake" in str(err.value)
    assert scp.files() == []
    tls_store(scp, TLSOptions(ca_file=pki.ca, cert_file=pki.client_cert,
                              key_file=pki.client_key)).send(instance)
    assert_received(scp, instance)


@pytest.mark.integration
def test_plain_store_to_a_tls_peer_fails(tls_scp, instance: Path) -> None:
    scp = tls_scp()
    store = DicomStore(name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port, timeout_s=5)
    with pytest.raises(SendError, match="pacs"):
        store.send(instance)


# -- return to sender ----------------------------------------------------------------------------


@pytest.mark.integration
def test_return_to_sender_stores_at_the_origin(tls_scp, pki: PKI, instance: Path) -> None:
    scp = tls_scp(ae_title="ANYSCP")
    dest = ReturnToSender(name="back", port=scp.port, timeout_s=10, tls=TLSOptions(ca_file=pki.ca))
    dest.send(instance, origin=Origin(ae_title="MODALITY", host="127.0.0.1"))
    assert_received(scp, instance)
    assert re.search(r"Called Application Name: +MODALITY\n", scp.log())


@pytest.mark.integration
def test_return_to_sender_uses_the_configured_address_of_a_known_ae(
        tls_scp, pki: PKI, instance: Path) -> None:
    scp = tls_scp()
    dest = ReturnToSender(name="back", port=free_port(), timeout_s=10, tls=TLSOptions(ca_file=pki.ca),
                          host_by_ae={"CR1": ("127.0.0.1", scp.port)})
    dest.send(instance, origin=Origin(ae_title="CR1", host="192.0.2.1"))  # TEST-NET: unreachable
    assert_received(scp, instance)
    with pytest.raises(SendError, match=r"back \(CR2@127.0.0.1:\d+, TLS\): cannot connect"):
        dest.send(instance, origin=Origin(ae_title="CR2", host="127.0.0.1"))


# -- STOW-RS -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_stow_rs_stores_the_instance_in_orthanc(orthanc_server, instance: Path) -> None:
    pacs: OrthancServer = orthanc_server()
    dest = DicomWebStore(name="web", url=pacs.dicomweb_url, timeout_s=10)
    dest.send(instance, origin=ORIGIN)
    assert pacs.instance_uids() == [dcmread(instance).SOPInstanceUID]


@pytest.mark.integration
def test_stow_rs_refusal_names_the_status_and_reason(orthanc_server, tmp_path: Path,
                                                     instance: Path) -> None:
    pacs: OrthancServer = orthanc_server()
    ds = dcmread(instance)
    del ds.StudyInstanceUID  # Orthanc cannot index an instance without one
    ds.save_as(bad := tmp_path / "bad.dcm", enforce_file_format=True)
    dest = DicomWebStore(name="web", url=pacs.dicomweb_url, timeout_s=10)
    with pytest.raises(SendError, match=r"web \(.*\): STOW-RS answered HTTP 400 Bad Request: "
                                        r"[\d.]+: reason 0xC000 \(cannot understand\)"):
        dest.send(bad)
    assert pacs.rest("/instances") == []


@pytest.mark.integration
def test_stow_rs_authenticates(orthanc_server, instance: Path) -> None:
    pacs: OrthancServer = orthanc_server(config={"AuthenticationEnabled": True,
                                                 "RegisteredUsers": {"radtriage": "s3cret"}})
    wrong = DicomWebStore(name="web", url=pacs.dicomweb_url, username="radtriage", password="nope")
    with pytest.raises(SendError, match="STOW-RS answered HTTP 401 Unauthorized"):
        wrong.send(instance)
    DicomWebStore(name="web", url=pacs.dicomweb_url, username="radtriage",
                  password="s3cret").send(instance)
    assert pacs.instance_uids() == [dcmread(instance).SOPInstanceUID]


def test_stow_rs_to_a_closed_port_fails(instance: Path) -> None:
    dest = DicomWebStore(name="web", url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=5)
    with pytest.raises(SendError, match=r"web \(http://127.0.0.1:\d+/dicom-web\): cannot connect: "
                                        r".*Connection refused"):
        dest.send(instance)


class CannedSTOW:
    """An in-process HTTP server answering every POST with one canned STOW-RS response."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.requests: list[dict[str, str]] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                canned.requests.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def canned_stow() -> Iterator[Callable[..., CannedSTOW]]:
    servers: list[CannedSTOW] = []

    def start(status: int, body: dict | str, content_type: str = "application/dicom+json") -> CannedSTOW:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        servers.append(CannedSTOW(status, data, content_type))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _stow_answer(instance: Path, *, failed: int | None = None, warning: int | None = None) -> dict:
    uid = str(dcmread(instance).SOPInstanceUID)
    item: dict = {"00081155": {"vr": "UI", "Value": [uid]}}
    if failed is not None:
        item["00081197"] = {"vr": "US", "Value": [failed]}
        return {"00081198": {"vr": "SQ", "Value": [item]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return {"00081199": {"vr": "SQ", "Value": [item]}}


def test_stow_rs_warning_is_logged_and_headers_are_sent(canned_stow, instance: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    server = canned_stow(202, _stow_answer(instance, warning=0xB000))
    dest = DicomWebStore(name="web", url=server.url, headers={"Authorization": "Bearer t0k"})
    with caplog.at_level(logging.WARNING, logger="dicom_io.destinations"):
        dest.send(instance)
    [record] = caplog.records
    assert "web" in record.getMessage() and "0xB000" in record.getMessage()
    assert record.study == str(dcmread(instance).StudyInstanceUID)  # type: ignore[attr-defined]
    [request] = server.requests
    assert request["Authorization"] == "Bearer t0k"
    assert request["Content-Type"].startswith("multipart/related")


def test_stow_rs_failed_sop_in_a_success_answer_fails(canned_stow, instance: Path) -> None:
    server = canned_stow(200, _stow_answer(instance, failed=0xA700))
    with pytest.raises(SendError, match=r"STOW-RS refused [\d.]+: reason 0xA700 \(out of resources\)"):
        DicomWebStore(name="web", url=server.url).send(instance)
    assert len(server.requests) == 1  # no retries of its own: the dispatcher retries


def test_stow_rs_server_error_names_status_and_text(canned_stow, instance: Path) -> None:
    server = canned_stow(503, "<html><body>Archive  offline</body></html>", "text/html")
    with pytest.raises(SendError, match=r"STOW-RS answered HTTP 503 Service Unavailable: "
                                        r"<html><body>Archive offline</body></html>"):
        DicomWebStore(name="web", url=server.url).send(instance)
    assert len(server.requests) == 1
