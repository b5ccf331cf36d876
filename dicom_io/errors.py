"""The exceptions of dicom_io; third-party errors are converted at the boundary with ``from``."""


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
