"""The Storage SCP: receive radiographs from the PACS, durably, and never lose one.

The C-STORE handler writes the bytes exactly as received (no decode, no re-encode) to a
temporary file, fsyncs it, renames it to ``storage/<study>/<series>/<sop>.dcm``, inserts the
instance row, commits, and only then answers Success. Nothing is decoded or scored here.

Every exception is mapped to a named status (:data:`STATUS_FOR`); the association goes on. A
file that cannot be understood is kept in ``storage/quarantine/`` with the reason beside it.

Hostile input (issue 17):

* what a connection may send, before and after its association is negotiated, is bounded by
  :mod:`daemon.transport` (the gate in front of pynetdicom's server): PDU lengths are capped at
  the header, each PDU and the request have a deadline, and connections still negotiating
  have their own caps and never take a ``node.max_associations`` slot;
* a deflated data set is inflated as a stream (:mod:`dicom_io.deflate`), never whole, at most
  ``limits.max_instance_mb``; a deflated image of more than ``limits.max_pixels`` is refused
  from its header (0xA700, not kept: it is not broken, only too large);
* a SOP Instance UID belongs to one study, series and content for good: an instance that
  names it under another study or series, or with other bytes, is refused (0xC409,
  :class:`InstanceConflict`), kept in quarantine, and a ``conflict`` event is added to the
  stored study (with both SHA-256 for other bytes); the stored copy is never touched;
* an association is rejected unless it calls radtriage by ``node.ae_title`` (when
  ``node.require_called_ae``, the default; called AE title not recognised, PS3.8 9.3.4), and a
  presentation context refused at negotiation (an MR, CT, ... instance; a transfer syntax
  radtriage cannot decode) is logged, one line per association, and counted
  (``radtriage_contexts_refused``): the sender only sees "no presentation context";
* identifiers from the network (calling AE title, UIDs, reasons that quote them) are logged
  with ``%r`` or escaped (:func:`daemon.logs.escape_controls`), in the log and in the
  quarantine note alike: a newline or a NUL in a UID cannot forge a line.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from io import BytesIO
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import RE_VALID_UID, UID
from pynetdicom import AE, evt
from pynetdicom.association import Association as NetAssociation
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)
from pynetdicom.status import Status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from daemon.access import calling_host_refusal, server_ssl_context
from daemon import metrics, transport
from daemon.config import Config, UrgencyConfig
from daemon.logs import escape_controls, study_logger
from db import Association, Database, Event, EventKind, Instance, Study, StudyState, utcnow
from dicom_io.deflate import read_file
from dicom_io.errors import (
    describe,
    DicomIOError,
    InstanceTooLarge,
    InvalidInstance,
    StorageError,
    StorageFull,
    UnsupportedInstance,
)
from dicom_io.codecs import decodable_transfer_syntaxes
from dicom_io.validate import check_instance
from dicom_io.storage import (
    check_uid,
    clear_temp,
    commit_temp,
    discard,
    durable_write,
    free_bytes,
    instance_relpath,
    sha256_file,
    write_temp,
)

log = logging.getLogger(__name__)

#: The SOP classes radtriage accepts; anything else is refused at negotiation.
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

# Named statuses (PS3.4 Annex B.2.3), registered on pynetdicom's Status so they read by name.
for _name, _code in (
    ("OUT_OF_RESOURCES", 0xA700),
    ("DATA_SET_DOES_NOT_MATCH_SOP_CLASS", 0xA900),
    ("CANNOT_UNDERSTAND", 0xC000),
    # a Cannot Understand sub-code (permanent: the same instance conflicts again), as
    # dcm4chee-arc answers an instance whose Study Instance UID contradicts the archive's
    ("SOP_INSTANCE_CONFLICT", 0xC409),
    ("PROCESSING_FAILURE", 0x0110),
):
    Status.add(_name, _code)


class InstanceConflict(DicomIOError):
    """The SOP Instance UID is stored under another study or series: it never moves."""


#: Which status answers which failure. Order matters: the first matching class wins.
STATUS_FOR: tuple[tuple[type[BaseException], int], ...] = (
    (StorageFull, Status.OUT_OF_RESOURCES),
    (InstanceTooLarge, Status.OUT_OF_RESOURCES),
    (UnsupportedInstance, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (InstanceConflict, Status.SOP_INSTANCE_CONFLICT),
    (InvalidInstance, Status.CANNOT_UNDERSTAND),
    (StorageError, Status.PROCESSING_FAILURE),
    (SQLAlchemyError, Status.PROCESSING_FAILURE),
    (OSError, Status.PROCESSING_FAILURE),
)

QUARANTINE_DIR = "quarantine"
_PREAMBLE = b"\x00" * 128 + b"DICM"
#: refusals that are the sender's doing: logged without a traceback
_EXPECTED = (InvalidInstance, UnsupportedInstance, StorageFull, InstanceTooLarge, InstanceConflict,
             OperationalError)


def status_for(exc: BaseException) -> int:
    for cls, code in STATUS_FOR:
        if isinstance(exc, cls):
            return int(code)
    return int(Status.PROCESSING_FAILURE)


@dataclass(frozen=True)
class ReceivedHeader:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str | None
    accession_number: str | None
    #: Requested Procedure Priority (0040,1003), top level or in the Request Attributes Sequence
    procedure_priority: str | None = None


def _procedure_priority(ds: Dataset) -> str | None:
    values = [ds.get("RequestedProcedurePriority")]
    for item in ds.get("RequestAttributesSequence") or ():
        values.append(item.get("RequestedProcedurePriority"))
    for value in values:
        text = str(value or "").strip().upper()
        if text:
            return text[:16]
    return None


#: C-STORE request Priority (0000,0700): 0x0002 HIGH (0x0000 MEDIUM, 0x0001 LOW)
C_STORE_PRIORITY_HIGH = 0x0002


def urgency_reason(rules: UrgencyConfig, *, c_store_priority: int | None,
                   procedure_priority: str | None, calling: str) -> str | None:
    """Why an instance makes its study urgent (``urgency:``), or None: a pure rule."""
    if rules.c_store_priority and c_store_priority == C_STORE_PRIORITY_HIGH:
        return "C-STORE priority HIGH"
    if procedure_priority and procedure_priority in rules.procedure_priorities:
        return f"requested procedure priority {procedure_priority}"
    if calling and calling in rules.calling_ae_titles:
        return f"calling AE {calling}"
    return None


def read_header(path: Path, *, sop_uid: str, sop_class_uid: str,
                limit: int | None = None) -> ReceivedHeader:
    """Parse what the database needs from a received file and check it matches the request.

    Reads up to the Pixel Data; a deflated data set is inflated as a stream, at most ``limit``
    bytes (:func:`dicom_io.deflate.read_file`), never whole."""
    try:
        ds = read_file(path, stop_before_pixels=True, limit=limit)
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        ds_sop = str(ds.get("SOPInstanceUID", "")).strip()
        ds_class = str(ds.get("SOPClassUID", "")).strip()
        modality = str(ds.get("Modality", "") or "").strip() or None
        accession = str(ds.get("AccessionNumber", "") or "").strip()[:16] or None
        procedure_priority = _procedure_priority(ds)
    except (InvalidDicomError, EOFError) as exc:  # structural: pydicom's text quotes no value
        raise InvalidInstance(f"the data set cannot be parsed: {type(exc).__name__}: {exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError, NotImplementedError, OverflowError) as exc:
        # a value that does not convert: the exception's type, never its text (it may quote a value)
        raise InvalidInstance(f"the data set cannot be parsed: {type(exc).__name__} reading "
                              "its header") from exc
    if ds_sop != sop_uid:
        raise InvalidInstance(f"SOP Instance UID in the data set ({ds_sop[:64]!r}) differs from the request")
    if ds_class != sop_class_uid:
        raise UnsupportedInstance(
            f"SOP Class UID in the data set ({ds_class[:64]!r}) differs from the request ({sop_class_uid})"
        )
    return ReceivedHeader(study_uid, series_uid, sop_uid, sop_class_uid, modality, accession,
                          procedure_priority)


#: Result of a refused presentation context (PS3.8 Table 9-18) -> the ``reason`` label of
#: ``radtriage_contexts_refused`` and what the log says
CONTEXT_REFUSALS: dict[int, tuple[str, str]] = {
    0x01: ("rejected", "rejected by radtriage"),  # user rejection: a role it does not take
    0x02: ("rejected", "rejected, no reason given"),  # provider rejection
    0x03: ("sop_class", "SOP class not accepted"),  # abstract syntax not supported
    0x04: ("transfer_syntax", "no transfer syntax radtriage can decode"),
}
#: UIDs pydicom does not know shown in one log line at most (the rest are counted); known SOP
#: classes are all named (an association proposes at most 128 contexts, and DCMTK's storescu
#: proposes some 60 by default)
_UNKNOWN_SHOWN = 8


@dataclass(frozen=True)
class RefusedContext:
    """A SOP class refused in one association, and why."""

    #: the metric label: the SOP class's name when pydicom knows it as one, else "other" (a UID
    #: from the wire is never a label: the label values stay a fixed, small set)
    label: str
    #: what the log shows: that name, or the UID as sent (``%r``-quoted, cut to 64 characters)
    shown: str
    #: a ``reason`` label of :data:`CONTEXT_REFUSALS`
    reason: str
    #: what the log says of why
    why: str


def _known(uid: str) -> UID | None:
    """``uid`` as a pydicom UID when it is valid (pydicom warns of an invalid one, quoting it),
    else None."""
    return UID(uid) if len(uid) <= 64 and RE_VALID_UID.match(uid) else None


def sop_class_name(uid: str) -> str | None:
    """The name of a SOP class pydicom knows (e.g. "MR Image Storage"), else None."""
    known = _known(uid)
    return known.name if known is not None and known.type in ("SOP Class", "Meta SOP Class") \
        else None


def refused_contexts(rejected: list[PresentationContext], accepted: list[PresentationContext],
                     requested: list[PresentationContext]) -> list[RefusedContext]:
    """The SOP classes refused in an association, once each, in the order proposed.

    A context refused for its transfer syntaxes whose SOP class another context of the
    association got (a sender proposing each transfer syntax on its own) is not a refusal:
    the class can still be sent. The proposed transfer syntaxes are named for the others."""
    ok = {str(cx.abstract_syntax) for cx in accepted}
    proposed = {cx.context_id: cx for cx in requested}
    out: dict[tuple[str, str], RefusedContext] = {}
    for cx in rejected:
        uid = str(cx.abstract_syntax or "")
        if uid in ok:
            continue
        reason, why = CONTEXT_REFUSALS.get(int(cx.result or 0), ("rejected", "rejected"))
        if reason == "transfer_syntax" and cx.context_id in proposed:
            names = [_name_of(str(ts)) for ts in proposed[cx.context_id].transfer_syntax]
            why = f"{why}: {', '.join(names)}" if names else why
        name = sop_class_name(uid)
        key = (uid, why)
        if key not in out:
            out[key] = RefusedContext(name or "other", name or repr(uid[:64]), reason, why)
    return list(out.values())


def _name_of(uid: str) -> str:
    known = _known(uid)
    return known.name if known is not None and known.name != uid else repr(uid[:64])


def refusal_text(refused: list[RefusedContext]) -> str:
    """One line: the refused SOP classes grouped by why, e.g. "MR Image Storage, CT Image
    Storage (SOP class not accepted)"; at most :data:`_UNKNOWN_SHOWN` UIDs pydicom does not
    know are quoted per group, the rest counted."""
    groups: dict[str, list[RefusedContext]] = {}
    for r in refused:
        groups.setdefault(r.why, []).append(r)
    parts = []
    for why, group in groups.items():
        shown = [r.shown for r in group if r.label != "other"]
        unknown = [r.shown for r in group if r.label == "other"]
        shown += unknown[:_UNKNOWN_SHOWN]
        more = len(unknown) - _UNKNOWN_SHOWN
        names = ", ".join(shown) + (f" and {more} other UID(s)" if more > 0 else "")
        parts.append(f"{names} ({why})")
    return "; ".join(parts)


def failure_status(code: int, exc: BaseException) -> Dataset:
    """A C-STORE failure response's status: ``code`` and an Error Comment (0000,0902) saying why,
    so the sender's log (storescu, a PACS's send queue) shows more than a number. An LO: 64
    characters of printable ASCII, from :func:`dicom_io.errors.describe` (never a header value)."""
    status = Dataset()
    status.Status = code
    text = describe(exc).encode("ascii", "replace").decode("ascii")
    status.ErrorComment = "".join(c if c.isprintable() and c != "\\" else " " for c in text)[:64].strip()
    return status


class Receiver:
    """radtriage's Storage SCP. ``on_stored`` and ``on_released`` wake the scheduler."""

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        on_released: Callable[[], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.config = config
        self.db = db
        self.root = config.storage.path
        self.clock = clock
        self.on_released = on_released
        self._assoc_ids: dict[int, int] = {}  # id(pynetdicom association) -> association.id
        self._lock = threading.Lock()
        self._server = None
        node = config.node
        self.ae = AE(ae_title=node.ae_title)
        # node.max_associations is counted by daemon.transport, on negotiated associations only;
        # pynetdicom's own count (every acceptor thread, closing ones too) must not refuse first
        self.ae.maximum_associations = transport.UNCOUNTED
        self.ae.maximum_pdu_size = node.max_pdu_size
        self.ae.acse_timeout = node.acse_timeout_s
        self.ae.dimse_timeout = node.dimse_timeout_s
        self.ae.network_timeout = node.network_timeout_s
        if node.allowed_calling_aes:
            self.ae.require_calling_aet = list(node.allowed_calling_aes)
        # another called AE title: A-ASSOCIATE-RJ (permanent, service user, called AE title
        # not recognised), logged by _on_rejected
        self.ae.require_called_aet = node.require_called_ae
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in RADIOGRAPH_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, syntaxes)
        self.ae.add_supported_context(Verification)
        self.max_instance_bytes = int(config.limits.max_instance_mb * 1024 * 1024)
        self._receiving: dict[int, int] = {}  # id(association) -> data-set bytes of the message

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        node = self.config.node
        if not node.allowed_calling_aes:
            log.warning(
                "node.allowed_calling_aes is empty: any calling AE title may send studies; "
                "list the PACS AE titles to restrict access"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        left = clear_temp(self.root)
        if left:
            log.warning("removed %d partly received file(s) an unclean stop left in %s", left,
                        self.root / ".tmp")
        # raises daemon.access.AccessError naming a certificate or key that cannot be loaded
        ssl_context = server_ssl_context(node.tls) if node.tls is not None else None
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_end, ["released"]),
            (evt.EVT_ABORTED, self._on_end, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_end, ["closed"]),
        ]
        # pynetdicom's server behind a gate that bounds what a connection may send before and
        # after its association is negotiated (daemon/transport.py says what and why)
        self._server = transport.start_server(
            self.ae, (node.host, node.port), transport.NetworkLimits.from_config(self.config),
            evt_handlers=handlers, ssl_context=ssl_context,
        )
        log.info("listening as %s on %s:%s%s", node.ae_title, node.host, self.port,
                 " (DICOM over TLS)" if ssl_context is not None else "")

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.node.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, let open associations finish (up to ``node.shutdown_grace_s``), close."""
        if self._server is not None:
            self._server.shutdown()  # closes the listening socket; open associations go on
            self._server = None
        deadline = time.monotonic() + self.config.node.shutdown_grace_s
        while self._established() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = len(self._established())
        if left:
            log.warning("aborting %d association(s) still open after node.shutdown_grace_s "
                        "(%s s); their senders get no Success for what was not stored",
                        left, self.config.node.shutdown_grace_s)
        self.ae.shutdown()

    def _established(self) -> list[NetAssociation]:
        """Associations transferring data; a connection still negotiating is not waited for."""
        return [a for a in self.ae.active_associations if a.is_established]

    # -- associations ----------------------------------------------------------------------

    def _association_id(self, assoc: NetAssociation) -> int:
        key = id(assoc)
        with self._lock:
            known = self._assoc_ids.get(key)
        if known is not None:
            return known
        req = assoc.requestor
        with self.db.session() as s:
            row = Association(
                calling_ae=(req.ae_title or "").strip()[:16],
                peer_host=str(req.address)[:64],
                peer_port=int(req.port or 0),
                started_at=self.clock(),
            )
            s.add(row)
            s.flush()
            assoc_id = row.id
        with self._lock:
            self._assoc_ids[key] = assoc_id
        return assoc_id

    def _on_rejected(self, event: evt.Event) -> None:
        """pynetdicom rejected the association: say why, once."""
        req = event.assoc.requestor
        calling = (req.ae_title or "").strip()
        called = str(getattr(req.primitive, "called_ae_title", "") or "").strip()
        node = self.config.node
        why = []
        if node.require_called_ae and called != node.ae_title:
            why.append(f"called AE title {called!r} is not node.ae_title ({node.ae_title}; "
                       "node.require_called_ae)")
        if node.allowed_calling_aes and calling not in node.allowed_calling_aes:
            why.append("calling AE title not in node.allowed_calling_aes")
        # node.max_associations is refused (and logged) by daemon.transport, before here
        log.warning("rejected association from %r at %s:%s: %s", calling, req.address, req.port,
                    "; ".join(why) or "association negotiation failed")

    def _on_accepted(self, event: evt.Event) -> None:
        """Log the presentation contexts refused in an accepted association, one line for the
        association, and count them (the sender only sees "no presentation context").

        A WARNING when the sender can send no radiograph in it (none accepted, or one refused
        for its transfer syntaxes); else INFO: many senders (DCMTK's storescu by default)
        propose every storage class they know alongside the radiographs they send."""
        assoc = event.assoc
        refused = refused_contexts(assoc.rejected_contexts, assoc.accepted_contexts,
                                   assoc.requestor.requested_contexts)
        if not refused:
            return
        for sop_class, why in sorted({(r.label, r.reason) for r in refused}):
            metrics.CONTEXTS_REFUSED.labels(sop_class, why).inc()
        radiographs = any(str(cx.abstract_syntax) in RADIOGRAPH_SOP_CLASSES
                          for cx in assoc.accepted_contexts)
        level = logging.INFO if radiographs and all(r.reason == "sop_class" for r in refused) \
            else logging.WARNING
        req = assoc.requestor
        log.log(level, "refused presentation context(s) proposed by %r at %s:%s: %s",
                (req.ae_title or "").strip(), req.address, req.port, refusal_text(refused))

    def _on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ received: turn away an AE title calling from an address not its own."""
        assoc = event.assoc
        req = assoc.requestor
        calling = str(req.primitive.calling_ae_title or "").strip()
        why = calling_host_refusal(calling, str(req.address), self.config.node.calling_hosts)
        if why is None:
            return
        log.warning("rejected association from %r at %s:%s: %s", calling, req.address, req.port, why)
        # permanent, service user, calling AE title not recognised (PS3.8 9.3.4)
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        assoc.kill()

    def _on_pdu(self, event: evt.Event) -> None:
        """Count the data-set bytes of the C-STORE being received; close the connection of one
        that grows past ``limits.max_instance_mb`` instead of holding it all in memory."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        key = id(event.assoc)
        total = self._receiving.get(key, 0)
        over = False
        for item in items:
            value = item.presentation_data_value
            if not value or value[0] & 0x01:  # a command fragment
                continue
            total += len(value) - 1
            # a little over the limit still gets its answer (0xA700) once complete
            over = over or total > self.max_instance_bytes + (1 << 20)
            if value[0] & 0x02:  # the data set's last fragment: the next message starts anew
                total = 0
        if over:
            self._receiving.pop(key, None)
            req = event.assoc.requestor
            log.error("closing the association from %r at %s:%s: a data set passed "
                      "limits.max_instance_mb (%s MB) while it was being received",
                      (req.ae_title or "").strip(), req.address, req.port,
                      self.config.limits.max_instance_mb)
            sock = event.assoc.dul.socket
            if sock is not None:
                sock.close()
            return
        self._receiving[key] = total

    def _on_end(self, event: evt.Event, reason: str) -> None:
        self._receiving.pop(id(event.assoc), None)
        with self._lock:
            assoc_id = self._assoc_ids.pop(id(event.assoc), None)
        if assoc_id is None:
            return
        try:
            with self.db.session() as s:
                row = s.get(Association, assoc_id)
                if row is not None and row.ended_at is None:
                    row.ended_at = self.clock()
                    row.end_reason = reason
        except SQLAlchemyError:
            # the completion rule falls back to stable_s for an association never marked ended
            log.exception("could not record the end of association %s", assoc_id)
        if self.on_released is not None:
            self.on_released()

    # -- C-STORE ---------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int | Dataset:
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")  # as sent: logged with %r, never raw
        sop_class = str(req.AffectedSOPClassUID or "")
        # escaped once here for the log, the notes, the events and the database (a legal AE
        # title has no control character, so it is unchanged)
        calling = escape_controls((event.assoc.requestor.ae_title or "").strip())
        tmp: Path | None = None
        try:
            min_free = self.config.storage.min_free_mb * 1024 * 1024
            if min_free and free_bytes(self.root) < min_free:
                raise StorageFull(
                    f"free space on {self.root} is below storage.min_free_mb "
                    f"({self.config.storage.min_free_mb} MB)"
                )
            meta = event.file_meta
            dataset = req.DataSet.getbuffer()
            if len(dataset) > self.max_instance_bytes:
                raise InstanceTooLarge(
                    f"the instance is {len(dataset) / 1048576:.1f} MB, more than "
                    f"limits.max_instance_mb ({self.config.limits.max_instance_mb} MB)")

            header_buf = BytesIO()
            header_buf.write(_PREAMBLE)
            write_file_meta_info(header_buf, meta, enforce_standard=True)
            tmp, size = write_temp(self.root, (header_buf.getbuffer(), dataset))
            try:
                # first: pydicom's lenient parse must not meet a broken file. A deflated data
                # set inflates as a stream under limits.max_instance_mb, and a deflated image
                # over limits.max_pixels is refused from its header (InstanceTooLarge)
                check_instance(tmp, max_inflated=self.max_instance_bytes,
                               max_pixels=self.config.limits.max_pixels)
                header = read_header(tmp, sop_uid=check_uid(sop_uid, "Affected SOP Instance UID"),
                                     sop_class_uid=sop_class, limit=self.max_instance_bytes)
            except (InvalidInstance, UnsupportedInstance) as exc:
                self._quarantine(tmp, sop_uid, calling, str(exc))
                tmp = None
                raise
            status = self._store(header, tmp, size, event, calling)
            tmp = None
            return status
        except Exception as exc:  # mapped to a named status: no exception may escape a handler
            code = status_for(exc)
            metrics.INSTANCES_RECEIVED.labels("failed" if code == Status.PROCESSING_FAILURE else "refused").inc()
            log.error("C-STORE of %r from %r refused with 0x%04X: %s", sop_uid[:64], calling,
                      code, exc, exc_info=not isinstance(exc, _EXPECTED))
            return failure_status(code, exc)
        finally:
            if tmp is not None:
                discard(tmp)

    def _store(self, header: ReceivedHeader, tmp: Path, size: int, event: evt.Event, calling: str) -> int:
        """Store a checked instance under its UIDs and record it.

        A SOP Instance UID stored already is refused unless the new copy is the same bytes
        (a duplicate: nothing changes). Under another study or series
        (:meth:`_refuse_conflict`), moving it would show one patient's image, and the heatmap
        scored on it, under another patient's study. Under the same study and series with other
        bytes (:meth:`_refuse_other_bytes`), replacing it would change what an SR already sent
        describes; DICOM gives changed content a new SOP Instance UID (PS3.3 C.12.1.1.1). Both
        are answered 0xC409, the new copy quarantined and the conflict recorded on the stored
        study; the stored copy is never touched.
        """
        relpath = instance_relpath(header.study_uid, header.series_uid, header.sop_uid)
        dest = self.root / relpath
        slog = study_logger(log, header.study_uid)
        stored = self._stored_under(header.sop_uid)
        if stored is not None and stored[:2] != (header.study_uid, header.series_uid):
            self._refuse_conflict(header, stored, tmp, calling)
        existed = dest.is_file()
        if existed and stored is not None:
            if self._identical_copy(header, dest, tmp, size, calling):
                discard(tmp)
                slog.info("instance %r re-sent by %r, identical: kept the stored copy",
                          header.sop_uid, calling)
                metrics.INSTANCES_RECEIVED.labels("duplicate").inc()
                return int(Status.SUCCESS)
            self._refuse_other_bytes(header, stored, dest, tmp, calling)
        assoc_id = self._association_id(event.assoc)
        commit_temp(self.root, tmp, relpath)
        try:
            try:
                self._record(header, relpath, size, event, calling, assoc_id)
            except IntegrityError:
                # another association inserted the same study or instance meanwhile: once more
                self._record(header, relpath, size, event, calling, assoc_id)
        except InstanceConflict:
            # another association stored the UID under another study or series since we
            # looked: keep this copy apart and record it, as above
            raced = self._stored_under(header.sop_uid)
            if existed or raced is None:
                raise
            self._refuse_conflict(header, raced, dest, calling)
        except BaseException:
            # answered with a failure: leave no file the database does not know of
            if not existed:
                discard(dest)
            raise
        slog.debug("stored %r (%d bytes) from %r", header.sop_uid, size, calling)
        metrics.INSTANCES_RECEIVED.labels("stored").inc()
        return int(Status.SUCCESS)

    def _stored_under(self, sop_uid: str) -> tuple[str, str, int] | None:
        """(Study Instance UID, Series Instance UID, study id) of the stored instance, if any."""
        with self.db.session() as s:
            row = s.execute(
                select(Study.study_instance_uid, Instance.series_instance_uid, Study.id)
                .join(Study, Instance.study_id == Study.id)
                .where(Instance.sop_instance_uid == sop_uid)
            ).first()
        return None if row is None else (row[0], row[1], row[2])

    def _refuse_conflict(self, header: ReceivedHeader, stored: tuple[str, str, int], tmp: Path,
                         calling: str) -> NoReturn:
        """The SOP Instance UID is stored under another study or series: keep the instance
        apart, add a ``conflict`` event to the stored study (UIDs only, never patient data),
        and raise :class:`InstanceConflict`."""
        study_uid, series_uid, study_id = stored
        self._conflict(header, study_id, tmp, calling,
                       f"SOP Instance UID {header.sop_uid} belongs to study {study_uid} series "
                       f"{series_uid}; this instance names study {header.study_uid} series "
                       f"{header.series_uid}: a SOP Instance UID never moves")

    def _refuse_other_bytes(self, header: ReceivedHeader, stored: tuple[str, str, int],
                            dest: Path, tmp: Path, calling: str) -> NoReturn:
        """The same UIDs with other bytes: keep the new copy apart, record both SHA-256 in a
        ``conflict`` event, and raise :class:`InstanceConflict`; the stored copy stays."""
        self._conflict(header, stored[2], tmp, calling,
                       f"SOP Instance UID {header.sop_uid} is stored with other content "
                       f"(sha256 {sha256_file(dest)}); this copy (sha256 {sha256_file(tmp)}) is "
                       "not stored: changed content needs a new SOP Instance UID")

    def _conflict(self, header: ReceivedHeader, study_id: int, tmp: Path, calling: str,
                  reason: str) -> NoReturn:
        rel = self._quarantine(tmp, header.sop_uid, calling, reason)
        with self.db.session() as s:
            s.add(Event(at=self.clock(), study_id=study_id, kind=EventKind.CONFLICT,
                        detail=f"instance sent by {calling}: {reason}: refused "
                               f"(0x{int(Status.SOP_INSTANCE_CONFLICT):04X}), kept as {rel}"))
        raise InstanceConflict(reason)

    def _identical_copy(self, header: ReceivedHeader, dest: Path, tmp: Path, size: int,
                        calling: str) -> bool:
        """A re-sent instance already stored byte for byte: record it, change nothing else."""
        with self.db.session() as s:
            existing = s.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_uid))
            if existing is None or existing.size_bytes != size or not _same_content(dest, tmp):
                return False
            s.add(Event(at=self.clock(), study_id=existing.study_id, kind=EventKind.DUPLICATE,
                        detail=f"instance {header.sop_uid} re-sent by {calling}, identical"))
        return True

    def _record(self, header: ReceivedHeader, relpath: str, size: int, event: evt.Event,
                calling: str, assoc_id: int) -> None:
        """Insert or update the instance row. Raises InstanceConflict if another association
        stored the SOP Instance UID under another study or series since :meth:`_store` looked."""
        now = self.clock()
        ts = str(event.context.transfer_syntax)
        with self.db.session() as s:
            instance = s.scalar(select(Instance).where(Instance.sop_instance_uid == header.sop_uid))
            if instance is not None and (
                    instance.study.study_instance_uid != header.study_uid
                    or instance.series_instance_uid != header.series_uid):
                raise InstanceConflict(f"SOP Instance UID {header.sop_uid} was stored under "
                                       "another study or series meanwhile: a SOP Instance UID "
                                       "never moves")
            study = s.scalar(
                select(Study).where(Study.study_instance_uid == header.study_uid).with_for_update()
            )
            if study is None:
                study = Study(
                    study_instance_uid=header.study_uid, accession_number=header.accession_number,
                    state=StudyState.RECEIVING, calling_ae=calling, first_received_at=now,
                    last_received_at=now, revision=1,
                )
                s.add(study)
                s.flush()
            elif study.state != StudyState.RECEIVING:
                previous = study.state
                study.state = StudyState.RECEIVING
                study.state_reason = None
                study.completed_at = None
                study.revision += 1
                s.add(Event(at=now, study_id=study.id, kind=EventKind.REOPENED,
                            detail=f"instance {header.sop_uid} arrived while {previous.value}; "
                                   f"revision {study.revision}"))
                study_logger(log, header.study_uid).info(
                    "late instance re-opened the study (was %s)", previous.value)
            study.last_received_at = now
            study.last_association_id = assoc_id
            urgent = urgency_reason(self.config.urgency, c_store_priority=event.request.Priority,
                                    procedure_priority=header.procedure_priority, calling=calling)
            if urgent and not study.urgent:
                study.urgent, study.urgent_reason = True, urgent
                study_logger(log, header.study_uid).info("urgent study: %s", urgent)
            study.calling_ae = calling
            if instance is None:
                instance = Instance(sop_instance_uid=header.sop_uid)
                s.add(instance)
            instance.study_id = study.id
            instance.series_instance_uid = header.series_uid
            instance.sop_class_uid = header.sop_class_uid
            instance.transfer_syntax_uid = ts
            instance.modality = header.modality
            instance.path = relpath
            instance.size_bytes = size
            instance.received_at = now
            instance.deleted_at = None  # received again after retention deleted its file
            instance.association_id = assoc_id
            s.add(Event(at=now, study_id=study.id, kind=EventKind.RECEIVED,
                        detail=f"instance {header.sop_uid} from {calling} ({UID(ts).name})"))

    def _quarantine(self, tmp: Path, sop_uid: str, calling: str, reason: str) -> str:
        """Keep what could not be understood, with the reason, for the operator; return where.

        The note has one line per field; every value is escaped
        (:func:`daemon.logs.escape_controls`), so a newline in a UID cannot forge a field."""
        stamp = self.clock().strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}"
        rel = f"{QUARANTINE_DIR}/{name}.dcm"
        commit_temp(self.root, tmp, rel)
        note = (f"calling AE: {escape_controls(calling)}\n"
                f"affected SOP instance: {escape_controls(sop_uid[:64])}\n"
                f"reason: {escape_controls(reason)}\n")
        durable_write(self.root, f"{QUARANTINE_DIR}/{name}.txt", [note.encode()])
        log.warning("quarantined an instance from %r as %s: %s", calling, rel,
                    escape_controls(reason))
        return rel


def _same_content(a: Path, b: Path, block: int = 1 << 20) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if x != y:
                return False
            if not x:
                return True
