"""``radtriage send``: C-STORE files to a DICOM node (radtriage, a PACS), each exactly as it is
stored: in its own transfer syntax, its data set bytes unchanged, over one association.

Senders such as DCMTK's ``storescu`` propose one list of transfer syntaxes for every file, so
a JPEG 2000 or JPEG-LS file finds no presentation context unless the right ``-x`` option was
guessed (and a folder mixing two compressed syntaxes needs one run per syntax). Here each
file's SOP Class and Transfer Syntax, read from its File Meta Information, make one
presentation context; the files go over one association (several only past the 128 contexts
one association can carry), and each gets one line: the status the peer answered, or why it
was not sent.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from pydicom.uid import UID

#: Presentation contexts one association can carry (PS3.8 9.3.2.2: odd IDs 1 to 255).
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class Outgoing:
    """A file to send: its SOP Class and Transfer Syntax, or why it cannot be sent."""

    path: Path
    sop_class: UID | None = None
    transfer_syntax: UID | None = None
    error: str | None = None

    @property
    def context(self) -> tuple[str, str]:
        return str(self.sop_class), str(self.transfer_syntax)


def read_outgoing(path: Path) -> Outgoing:
    """What the file's File Meta Information says; an Outgoing with ``error`` when it has none
    to send by (not a DICOM Part 10 file)."""
    from pydicom.errors import InvalidDicomError
    from pynetdicom.dsutils import split_dataset

    try:
        meta, _offset = split_dataset(path)
    except InvalidDicomError:
        return Outgoing(path, error="not a DICOM file (no 'DICM' and File Meta Information)")
    except OSError as exc:
        return Outgoing(path, error=f"cannot read it: {exc.strerror or exc}")
    except (ValueError, EOFError, KeyError) as exc:
        return Outgoing(path, error=f"not a DICOM file: its File Meta Information is unreadable "
                        f"({type(exc).__name__}: {exc})")
    missing = [k for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                           "TransferSyntaxUID") if k not in meta]
    if missing:
        return Outgoing(path, error=f"not a DICOM Part 10 file: no {', '.join(missing)} in its "
                        "File Meta Information")
    sop_class, syntax = UID(str(meta.MediaStorageSOPClassUID)), UID(str(meta.TransferSyntaxUID))
    for what, value in (("Media Storage SOP Class UID", sop_class), ("Transfer Syntax UID", syntax)):
        if not value.is_valid:
            return Outgoing(path, error=f"its {what} {str(value)!r} is not a valid UID")
    return Outgoing(path, sop_class, syntax)


def contexts_of(files: Sequence[Outgoing]) -> list[tuple[str, str]]:
    """One (SOP Class, Transfer Syntax) per pair the files use, in the order first used."""
    return list(dict.fromkeys(f.context for f in files if f.error is None))


#: What the failure statuses radtriage's receiver answers mean (README, "The path of a study");
#: other codes are described by pynetdicom's tables.
RADTRIAGE_STATUSES: dict[int, str] = {
    0xA700: "out of resources (storage full, or the instance is over a size limit)",
    0xA900: "the data set does not match its SOP class",
    0xC000: "cannot understand (malformed; quarantined)",
    0xC409: "its SOP Instance UID is already stored with other content or under another study "
            "or series (quarantined)",
    0x0110: "processing failure (the database or storage failed; send it again)",
}


def status_text(status: object) -> tuple[bool, str]:
    """(whether the peer stored it, a line part) for a C-STORE response (an empty one: the
    association was lost or timed out)."""
    from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS, code_to_category

    code = getattr(status, "Status", None)
    if code is None:
        return False, "no response (the association was aborted or timed out)"
    code = int(code)
    category = code_to_category(code)
    known = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code)
    meaning = RADTRIAGE_STATUSES.get(code) or (known[1] if known and known[1] else None)
    text = f"{category} 0x{code:04X}"
    if category != "Success" and meaning:
        text += f" {meaning}"
    comment = getattr(status, "ErrorComment", None)
    if comment:
        text += f": {comment}"
    return category in ("Success", "Warning"), text


@contextlib.contextmanager
def _file_bytes_as_they_are() -> Iterator[None]:
    """pynetdicom sends a file's data set from the file, byte for byte, rather than decoding and
    re-encoding it (``STORE_SEND_CHUNKED_DATASET``); and its log stays quiet (each file's line
    says what happened)."""
    from pynetdicom import _config

    quiet = logging.getLogger("pynetdicom")
    saved = _config.STORE_SEND_CHUNKED_DATASET, quiet.level
    _config.STORE_SEND_CHUNKED_DATASET = True
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET, level = saved
        quiet.setLevel(level)


def send_files(files: Sequence[Path], host: str, port: int, *, calling: str, called: str,
               timeout_s: float, out: TextIO) -> int:
    """Send ``files``; print one line per file; return how many were not stored."""
    outgoing = [read_outgoing(f) for f in files]
    contexts = contexts_of(outgoing)
    failures = 0
    with _file_bytes_as_they_are():
        for start in range(0, max(len(contexts), 1), MAX_CONTEXTS):
            chunk = set(contexts[start:start + MAX_CONTEXTS])
            # in file order; a file that cannot be sent has its line with the first association
            batch = [f for f in outgoing if (f.error is not None and start == 0) or
                     (f.error is None and f.context in chunk)]
            failures += _send_batch(batch, contexts[start:start + MAX_CONTEXTS], host, port,
                                    calling=calling, called=called, timeout_s=timeout_s, out=out)
    return failures


def _send_batch(batch: list[Outgoing], contexts: list[tuple[str, str]], host: str, port: int, *,
                calling: str, called: str, timeout_s: float, out: TextIO) -> int:
    from pynetdicom import AE

    failures = sum(f.error is not None for f in batch)
    if not contexts:  # nothing to send: only the files that cannot be
        for f in batch:
            print(f"{f.path}: not sent: {f.error}", file=out)
        return failures
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        why = (f"{called} at {host}:{port} rejected the association (check --aec, --aet and "
               "the calling AE titles it allows)" if assoc.is_rejected
               else f"cannot associate with {called} at {host}:{port} (refused, down or timed out)")
        for f in batch:
            print(f"{f.path}: not sent: {f.error or why}", file=out)
        return len(batch)
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    try:
        for f in batch:
            if f.error is not None:
                print(f"{f.path}: not sent: {f.error}", file=out)
                continue
            if f.context not in accepted:
                print(f"{f.path}: not sent: {called} refused {f.sop_class.name} in "
                      f"{f.transfer_syntax.name} at negotiation", file=out)
                failures += 1
                continue
            if not assoc.is_established:
                print(f"{f.path}: not sent: the association ended", file=out)
                failures += 1
                continue
            try:
                stored, text = status_text(assoc.send_c_store(f.path))
            except (OSError, ValueError, AttributeError) as exc:  # unreadable since it was read
                stored, text = False, f"not sent: {exc}"
            print(f"{f.path}: {text}", file=out)
            failures += not stored
    finally:
        if assoc.is_established:
            assoc.release()
    return failures
