"""Where results go: one small interface, its implementations, and a fake for tests.

A destination receives a file path of a DICOM object radtriage wrote, and the :class:`Origin` of
the study (the node that sent it to us, when known), and either returns (the peer accepted it,
perhaps with a warning, which is logged) or raises :class:`~dicom_io.errors.SendError` saying why.

- :class:`DicomStore`: C-STORE to a DICOM node, optionally over TLS (:class:`TLSOptions`).
- :class:`DicomWebStore`: STOW-RS to a DICOMweb server (dicomweb-client over a requests session).
- :class:`ReturnToSender`: C-STORE back to the node each study came from.
- :class:`FakeDestination`: records what it was sent; for tests.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import ssl
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, cast

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from dicom_io.errors import SendError

log = logging.getLogger(__name__)


def _study_log(study_uid: object) -> logging.LoggerAdapter:
    return logging.LoggerAdapter(log, {"study": str(study_uid or "-")})


@dataclass(frozen=True)
class Origin:
    """The node a study came from: the calling AE title of its association and the peer's address."""

    ae_title: str
    host: str


class Destination(Protocol):
    name: str

    def send(self, path: Path, *, origin: Origin | None = None) -> None:
        """Deliver the object at ``path``; raise SendError when it was not accepted.

        ``origin`` is the node the study came from, for destinations that answer it
        (:class:`ReturnToSender`); the others ignore it.
        """


# -- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSOptions:
    """TLS for an outgoing DICOM association (PS3.15 B.1, the BCP 195 profiles).

    ca_file: CA certificates (PEM) the peer's certificate must chain to; None: the system's.
    cert_file, key_file: our client certificate and its key (PEM), for peers that ask for one;
        key_file None: the key is in cert_file.
    check_hostname: the peer's certificate must name the host we connect to (or server_hostname).
    server_hostname: the name to send (SNI) and check; None: the destination's host.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True
    server_hostname: str | None = None

    def context(self) -> ssl.SSLContext:
        """The client SSLContext these options describe (built once per options, then shared).

        Raises SendError naming the file when a certificate or key cannot be loaded.
        """
        return _client_context(self)


@functools.lru_cache(maxsize=None)
def _client_context(options: TLSOptions) -> ssl.SSLContext:
    if options.key_file is not None and options.cert_file is None:
        raise SendError("TLS: key_file given without cert_file")
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(options.ca_file) if options.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise SendError(f"TLS: cannot load ca_file {options.ca_file}: {_tls_reason(exc)}") from exc
    ctx.check_hostname = options.check_hostname
    if options.cert_file is not None:
        try:
            ctx.load_cert_chain(options.cert_file, options.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise SendError(f"TLS: cannot load cert_file {options.cert_file} / key_file "
                            f"{options.key_file}: {_tls_reason(exc)}") from exc
    ctx.sslsocket_class = _ReportingSSLSocket
    return ctx


def _tls_reason(exc: BaseException) -> str:
    """An SSL error as a sentence, without OpenSSL's source location."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))


class _ReportingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that tells its send about a TLS error before pynetdicom swallows it.

    pynetdicom logs a failed handshake and reports only "not established"; the send wants the
    reason (certificate verify failed, certificate required, ...) for the delivery's last error.
    """

    _report: Callable[[ssl.SSLError], None] | None = None

    def _reported(self, exc: ssl.SSLError) -> None:
        if self._report is not None:
            self._report(exc)

    def connect(self, addr: Any) -> None:
        try:
            super().connect(addr)
        except ssl.SSLError as exc:
            self._reported(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._reported(exc)
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except ssl.SSLError as exc:
            self._reported(exc)
            raise


class _TLSAttempt:
    """Stands in for the shared SSLContext during one association: keeps its first TLS error
    and the sockets it wrapped (in ``sockets``, for the send to close)."""

    def __init__(self, context: ssl.SSLContext, sockets: list[socket.socket]) -> None:
        self.context = context
        self.sockets = sockets
        self.error: ssl.SSLError | None = None

    def _record(self, exc: ssl.SSLError) -> None:
        if self.error is None:
            self.error = exc

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    server_hostname: str | None = None) -> ssl.SSLSocket:
        wrapped = self.context.wrap_socket(sock, server_side=server_side,
                                           server_hostname=server_hostname)
        self.sockets.append(wrapped)
        if isinstance(wrapped, _ReportingSSLSocket):
            wrapped._report = self._record
        return wrapped


# -- pynetdicom's log lines about our associations --------------------------------------------


class _Send:
    """One C-STORE under way: where to and for which study, the threads that act for its
    association (the caller; pynetdicom's association and DUL threads) and what pynetdicom
    said about it at WARNING or above."""

    #: at most this many of pynetdicom's lines, each cut to LINE_CHARS, go into the SendError
    MAX_LINES, LINE_CHARS = 6, 300

    def __init__(self, where: str, study: str) -> None:
        self.where, self.study = where, study
        self.caller = threading.get_ident()
        self.associations: list[Any] = []
        self.said: list[str] = []

    def acts_in(self, thread_id: int | None) -> bool:
        if thread_id == self.caller:
            return True
        return any(thread_id in (a.ident, getattr(getattr(a, "dul", None), "ident", None))
                   for a in self.associations)

    def heard(self, message: str) -> None:
        if len(self.said) < self.MAX_LINES:
            self.said.append(message[:self.LINE_CHARS])

    def detail(self, *, besides: str = "") -> str:
        """What pynetdicom said, as ": line; line" (lines that only repeat ``besides`` left
        out), or "" when it said nothing."""
        lines = [line for line in self.said if line.strip().lower() != besides.lower()]
        return f": {'; '.join(lines)}" if lines else ""


class AssociationLog(logging.Filter):
    """Labels pynetdicom's log records about our outgoing associations, and keeps them quiet.

    pynetdicom logs a refused connection or a rejected association as two or three ERROR lines
    that name neither the destination nor the study, from its own threads. While
    :meth:`sending`, each record from a thread acting for that association gets the study
    (``study``) and the destination (a prefix), and is lowered to DEBUG (written only where
    pynetdicom's logger is set to DEBUG); what it said at WARNING or above is kept for the
    send's :class:`SendError`, which the dispatcher logs once, as a WARNING naming both.
    Records about other associations (the receiver's) pass untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sends: dict[int, _Send] = {}
        self._lock = threading.Lock()

    @contextmanager
    def sending(self, where: str, study: str) -> Iterator[_Send]:
        self.install()
        send = _Send(where, study)
        with self._lock:
            self._sends[send.caller] = send
        try:
            yield send
        finally:
            with self._lock:
                self._sends.pop(send.caller, None)

    def adopt(self, assoc: Any) -> None:
        """The association the calling thread is opening now acts for its send."""
        with self._lock:
            send = self._sends.get(threading.get_ident())
            if send is not None:
                send.associations.append(assoc)

    def install(self) -> None:
        """Filter every pynetdicom logger (a logger's filters do not see its children's
        records); idempotent, and cheap enough to run before each send."""
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if (name == "pynetdicom" or name.startswith("pynetdicom.")) \
                    and isinstance(logger, logging.Logger) and self not in logger.filters:
                logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            if not self._sends:
                return True
            send = next((s for s in self._sends.values() if s.acts_in(record.thread)), None)
        if send is None:
            return True
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            send.heard(message)
        record.msg, record.args = "%s: %s", (send.where, message)
        record.study = send.study
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


#: The one filter on pynetdicom's loggers (installed by the first send).
ASSOCIATION_LOG = AssociationLog()


class _ClosingAE(AE):
    """pynetdicom's AE, remembering the sockets of its associations so the send can close them.

    pynetdicom 3.0 closes a socket only after ``shutdown()`` succeeded; on a refused or reset
    connection ``shutdown()`` raises and the socket is left open for the garbage collector
    (a ResourceWarning, an error under pytest). Overrides the one hook it offers for sockets.
    """

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self.sockets: list[socket.socket] = []

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
        ASSOCIATION_LOG.adopt(assoc)  # the association's threads now log for this send
        sock = super()._create_socket(assoc, address, tls_args)
        if sock.socket is not None:
            self.sockets.append(sock.socket)
        return sock

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()  # a no-op on one already closed, or detached by the TLS wrapper
        self.sockets.clear()


# -- C-STORE -------------------------------------------------------------------------------------


@dataclass
class DicomStore:
    """A DICOM node reached by C-STORE (a PACS, a viewer, DCMTK's storescp), over TLS if ``tls``.

    A bad certificate or key file in ``tls`` raises SendError when the store is built.
    """

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "RADTRIAGE"
    timeout_s: float = 30.0
    tls: TLSOptions | None = None
    _ssl_context: ssl.SSLContext | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tls is not None:
            self._ssl_context = self.tls.context()

    def describe(self) -> str:
        tls = ", TLS" if self.tls is not None else ""
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port}{tls})"

    def send(self, path: Path, *, origin: Origin | None = None) -> None:
        try:
            meta = dcmread(path, stop_before_pixels=True,
                           specific_tags=["SOPClassUID", "StudyInstanceUID"])
        except (OSError, InvalidDicomError) as exc:
            raise SendError(f"cannot read {path.name}: {exc}") from exc
        ae = _ClosingAE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ts = meta.file_meta.TransferSyntaxUID
        syntaxes = list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(meta.SOPClassUID, syntaxes)
        try:
            with ASSOCIATION_LOG.sending(self.describe(), str(meta.get("StudyInstanceUID", "-"))) as send:
                code = self._store(ae, path, send)
        finally:
            ae.close_sockets()
        if code_to_category(code) == "Warning":
            _study_log(meta.get("StudyInstanceUID")).warning(
                "%s accepted %s with warning 0x%04X", self.describe(), path.name, code)

    def _store(self, ae: _ClosingAE, path: Path, send: _Send) -> int:
        """Associate, C-STORE ``path``, release; the status code (Success or Warning). A
        failure's SendError ends with what pynetdicom said about it (``send``)."""
        attempt = None
        tls_args = None
        if self._ssl_context is not None:
            attempt = _TLSAttempt(self._ssl_context, ae.sockets)
            hostname = (self.tls.server_hostname if self.tls else None) or self.host
            tls_args = (cast(ssl.SSLContext, attempt), hostname)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, tls_args=tls_args)
        except OSError as exc:  # name resolution and similar socket errors
            raise SendError(f"{self.describe()}: cannot connect: {exc}") from exc
        tls_error = attempt.error if attempt is not None else None
        if not assoc.is_established:
            if tls_error is not None:
                raise SendError(f"{self.describe()}: TLS handshake failed: "
                                f"{_tls_reason(tls_error)}") from tls_error
            if assoc.is_rejected:
                raise SendError(f"{self.describe()}: association rejected"
                                f"{send.detail(besides='association rejected')}")
            raise SendError(f"{self.describe()}: cannot connect (refused, down or timed out)"
                            f"{send.detail()}")
        try:
            status = assoc.send_c_store(path)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SendError(f"{self.describe()}: C-STORE failed: {exc}") from exc
        finally:
            if assoc.is_established:
                assoc.release()
        if not status or "Status" not in status:
            tls_error = attempt.error if attempt is not None else None
            if tls_error is not None:
                raise SendError(f"{self.describe()}: TLS failed: {_tls_reason(tls_error)}")
            raise SendError(f"{self.describe()}: no C-STORE response (connection lost or timed "
                            f"out){send.detail()}")
        code = int(status.Status)
        category = code_to_category(code)
        if category not in ("Success", "Warning"):
            raise SendError(f"{self.describe()}: C-STORE answered {category} 0x{code:04X}")
        return code


@dataclass
class ReturnToSender:
    """C-STORE back to the node each study came from (the modality or PACS that sent it).

    The called AE title is the study's calling AE title (or ``ae_title`` when set), the host is
    the peer address of its association, the port is ``port``: a sender's listening port is not
    known from its association. ``host_by_ae`` maps a calling AE title to the (host, port) to use
    instead, as a PACS administrator configures known modalities.
    """

    name: str
    port: int
    ae_title: str | None = None
    host_by_ae: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    calling_ae_title: str = "RADTRIAGE"
    timeout_s: float = 30.0
    tls: TLSOptions | None = None

    def __post_init__(self) -> None:
        if self.tls is not None:
            self.tls.context()  # a bad certificate file fails now, not at the first send

    def store_for(self, origin: Origin) -> DicomStore:
        """The C-STORE destination that answers ``origin``."""
        host, port = self.host_by_ae.get(origin.ae_title.strip(), (origin.host, self.port))
        return DicomStore(name=self.name, ae_title=self.ae_title or origin.ae_title.strip(),
                          host=host, port=port, calling_ae_title=self.calling_ae_title,
                          timeout_s=self.timeout_s, tls=self.tls)

    def send(self, path: Path, *, origin: Origin | None = None) -> None:
        if origin is None:
            raise SendError(f"{self.name}: the study's sender is not known")
        self.store_for(origin).send(path)


# -- STOW-RS -------------------------------------------------------------------------------------

#: Failure reasons (0008,1197) of PS3.18 STOW-RS responses and C-STORE, by code.
_FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}


def _failed_sops(response: Dataset) -> list[str]:
    """One line per item of the Failed SOP Sequence (0008,1198) of a STOW-RS response."""
    lines = []
    for item in response.get("FailedSOPSequence", []):
        reason = item.get("FailureReason")
        text = "no reason given"
        if reason is not None:
            text = f"reason 0x{int(reason):04X}"
            if int(reason) in _FAILURE_REASONS:
                text += f" ({_FAILURE_REASONS[int(reason)]})"
        lines.append(f"{item.get('ReferencedSOPInstanceUID', '?')}: {text}")
    return lines


def _warnings(response: Dataset) -> list[str]:
    """The Warning Reasons (0008,1196) of a STOW-RS response, overall and per instance."""
    found = []
    if "WarningReason" in response:
        found.append(f"0x{int(response.WarningReason):04X}")
    for item in response.get("ReferencedSOPSequence", []):
        if "WarningReason" in item:
            found.append(f"{item.get('ReferencedSOPInstanceUID', '?')}: 0x{int(item.WarningReason):04X}")
    return found


def _requests_reason(exc: requests.RequestException) -> str:
    """The cause of a failed request, without urllib3's "Max retries exceeded" wrapping."""
    reason: object = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", None) or reason  # urllib3's MaxRetryError: its cause
    return _tls_reason(reason if isinstance(reason, BaseException) else exc)


def _error_body(response: requests.Response) -> str:
    """What an HTTP error response says: its failed SOPs (Orthanc sends them without a
    Content-Type), or the start of its text."""
    try:
        failed = _failed_sops(Dataset.from_json(response.json()))
    except (ValueError, TypeError, KeyError, AttributeError):
        text = " ".join(response.text.split())[:200]
        return f": {text}" if text else ""
    return f": {'; '.join(failed)}" if failed else ""


@dataclass
class DicomWebStore:
    """A DICOMweb server reached by STOW-RS (PS3.18 10.5), e.g. Orthanc's ``/dicom-web/``.

    url: the DICOMweb base URL (``.../studies`` is appended). headers: sent with every request
    (e.g. ``Authorization``). ca_file: CA certificates (PEM) an https server must chain to;
    None: the system's. username/password: HTTP basic authentication. No retries here: the
    dispatcher's queue retries with backoff.
    """

    name: str
    url: str
    timeout_s: float = 30.0
    headers: Mapping[str, str] | None = None
    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    _client: DICOMwebClient = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise SendError(f"{self.name}: ca_file {self.ca_file} is not a file")
        session = requests.Session()
        session.verify = str(self.ca_file) if self.ca_file is not None else True
        if self.username is not None:
            session.auth = (self.username, self.password or "")
        self._client = DICOMwebClient(url=self.url.rstrip("/"), session=session,
                                      headers=dict(self.headers or {}), timeout=self.timeout_s)
        self._client.set_http_retry_params(retry=False)

    def describe(self) -> str:
        return f"{self.name} ({self.url})"

    def send(self, path: Path, *, origin: Origin | None = None) -> None:
        try:
            ds = dcmread(path)
        except (OSError, InvalidDicomError) as exc:
            raise SendError(f"cannot read {path.name}: {exc}") from exc
        where = self.describe()
        try:
            response = self._client.store_instances([ds])
        except requests.exceptions.SSLError as exc:
            raise SendError(f"{where}: TLS failed: {_requests_reason(exc)}") from exc
        except requests.exceptions.Timeout as exc:
            raise SendError(f"{where}: STOW-RS timed out after {self.timeout_s:g} s") from exc
        except requests.exceptions.ConnectionError as exc:
            raise SendError(f"{where}: cannot connect: {_requests_reason(exc)}") from exc
        except requests.exceptions.HTTPError as exc:
            r = exc.response
            status = f"HTTP {r.status_code} {r.reason}" if r is not None else str(exc)
            body = _error_body(r) if r is not None else ""
            raise SendError(f"{where}: STOW-RS answered {status}{body}") from exc
        except requests.exceptions.RequestException as exc:
            raise SendError(f"{where}: STOW-RS failed: {exc}") from exc
        except ValueError as exc:  # a response dicomweb-client cannot parse
            raise SendError(f"{where}: STOW-RS gave an unreadable response: {exc}") from exc
        failed = _failed_sops(response)
        if failed:
            raise SendError(f"{where}: STOW-RS refused {'; '.join(failed)}")
        warnings = _warnings(response)
        if warnings:
            _study_log(ds.get("StudyInstanceUID")).warning(
                "%s accepted %s with warning %s", where, path.name, ", ".join(warnings))


# -- fake ----------------------------------------------------------------------------------------


@dataclass
class FakeDestination:
    """In-memory destination for tests: records what it was sent, fails while ``down``.

    ``sent`` lists the paths, ``origins`` the origin given with each, in the same order.
    """

    name: str = "fake"
    down: bool = False
    sent: list[Path] = field(default_factory=list)
    origins: list[Origin | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, path: Path, *, origin: Origin | None = None) -> None:
        with self._lock:
            if self.down:
                raise SendError(f"{self.name}: down")
            self.sent.append(path)
            self.origins.append(origin)
