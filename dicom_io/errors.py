"""The exceptions of dicom_io; third-party errors are converted at the boundary with ``from``."""

import re


class DicomIOError(Exception):
    """Base of every error raised by dicom_io."""


class InvalidInstance(DicomIOError):
    """A received or read instance is malformed or not what it claims to be."""


class UnsupportedInstance(DicomIOError):
    """A well-formed instance radtriage does not handle (SOP class, photometric, ...)."""


class StorageFull(DicomIOError):
    """The storage volume has no room left for the instance."""


class StorageError(DicomIOError):
    """Writing to or reading from the storage volume failed."""


class PixelDecodeError(DicomIOError):
    """The pixel data could not be decoded or converted."""


class SendError(DicomIOError):
    """Sending an object to a destination failed (down, refused, or a failure status)."""


class InstanceTooLarge(DicomIOError):
    """A received instance is larger than ``limits.max_instance_mb`` allows."""


class OutputError(DicomIOError, ValueError):
    """An output cannot be made from what the study holds (an order update without an accession
    number to match, ...). Its message names attributes, never their values."""


def describe(exc: BaseException, *, phi: bool = False) -> str:
    """What a log line, an audit event or a state reason may say of ``exc``: its type, and

    * its message when radtriage wrote it (a :class:`DicomIOError`: it names attributes and
      UIDs, never patient data), when the operating system or the database layer did (an
      ``OSError``, a ``SQLAlchemyError``: :func:`_trusted`), or when ``phi``
      (``logging.phi``) allows patient data;
    * else where it was raised, and the attribute when the library named its tag, e.g.
      ``ValueError in pydicom.valuerep (PatientBirthDate)``: a library's message may quote the
      value itself (a birth date, a name).
    """
    name = type(exc).__name__
    if phi or _trusted(exc):
        text = " ".join(str(exc).split())
        return f"{name}: {text}" if text else name
    where = _raised_in(exc)
    keyword = _keyword_in(str(exc))
    return name + (f" in {where}" if where else "") + (f" ({keyword})" if keyword else "")


def _trusted(exc: BaseException) -> bool:
    """Messages that quote no header value: radtriage's own, the operating system's (an errno,
    its text and a path of UIDs), the database layer's (its statement's parameters are hidden:
    ``db.session``)."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (DicomIOError, OSError, SQLAlchemyError))


def _raised_in(exc: BaseException) -> str | None:
    """The module of the innermost frame outside Python's standard library."""
    import sys

    found = None
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module and module.split(".")[0] not in sys.stdlib_module_names:
            found = module
        tb = tb.tb_next
    return found


_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")


def _keyword_in(message: str) -> str | None:
    """The keyword of the first DICOM tag ``(gggg,eeee)`` a message names (pydicom names the
    tag it failed on), or None."""
    from pydicom.datadict import keyword_for_tag

    match = _TAG.search(message)
    if match is None:
        return None
    return keyword_for_tag(int(match.group(1) + match.group(2), 16)) or None
