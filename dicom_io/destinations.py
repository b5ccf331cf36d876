"""Where results go: one small interface, a C-STORE implementation, and a fake for tests.

A destination receives a file path of a DICOM object radtriage wrote and either returns (the
peer answered Success or a Warning) or raises :class:`~dicom_io.errors.SendError` saying why.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from dicom_io.errors import SendError

log = logging.getLogger(__name__)


class Destination(Protocol):
    name: str

    def send(self, path: Path) -> None:
        """Deliver the object at ``path``; raise SendError when it was not accepted."""


@dataclass
class DicomStore:
    """A DICOM node reached by C-STORE (a PACS, a viewer, DCMTK's storescp)."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "RADTRIAGE"
    timeout_s: float = 30.0

    def describe(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"

    def send(self, path: Path) -> None:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (OSError, InvalidDicomError) as exc:
            raise SendError(f"cannot read {path.name}: {exc}") from exc
        sop_class = meta.SOPClassUID
        ts = meta.file_meta.TransferSyntaxUID
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        syntaxes = list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(sop_class, syntaxes)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        except OSError as exc:  # name resolution and similar socket errors
            raise SendError(f"{self.describe()}: cannot connect: {exc}") from exc
        if not assoc.is_established:
            if assoc.is_rejected:
                raise SendError(f"{self.describe()}: association rejected")
            raise SendError(f"{self.describe()}: cannot connect (refused, down or timed out)")
        try:
            status = assoc.send_c_store(path)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SendError(f"{self.describe()}: C-STORE failed: {exc}") from exc
        finally:
            if assoc.is_established:
                assoc.release()
        if not status or "Status" not in status:
            raise SendError(f"{self.describe()}: no C-STORE response (connection lost or timed out)")
        code = int(status.Status)
        category = code_to_category(code)
        if category not in ("Success", "Warning"):
            raise SendError(f"{self.describe()}: C-STORE answered {category} 0x{code:04X}")
        if category == "Warning":
            log.warning("%s accepted %s with warning 0x%04X", self.describe(), path.name, code)


@dataclass
class FakeDestination:
    """In-memory destination for tests: records what it was sent, fails while ``down``."""

    name: str = "fake"
    down: bool = False
    sent: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, path: Path) -> None:
        with self._lock:
            if self.down:
                raise SendError(f"{self.name}: down")
            self.sent.append(path)
