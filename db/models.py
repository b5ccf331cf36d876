"""SQLAlchemy 2 models: the whole state of radtriage lives here, so every stage can be re-run.

Studies move ``receiving -> complete -> scoring -> scored -> dispatching -> delivered``, with
``failed`` (and a reason) reachable from each and ``rejected`` for what must never be scored.
Patient names and IDs are not stored: what the outputs need is read from the stored instances.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    false,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    or_,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class StudyState(str, enum.Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    SCORING = "scoring"
    SCORED = "scored"
    DISPATCHING = "dispatching"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"


class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"            # gave up after dispatch.max_attempts; kept for the operator
    SUPERSEDED = "superseded"  # a newer result replaced it before it was sent


class EventKind(str, enum.Enum):
    RECEIVED = "received"
    DUPLICATE = "duplicate"
    REOPENED = "reopened"
    COMPLETED = "completed"
    SCORED = "scored"
    NOT_ANALYSED = "not_analysed"
    SENT = "sent"
    SEND_FAILED = "send_failed"
    FAILED = "failed"
    RECOVERED = "recovered"
    #: retention deleted the study's stored instances (``daemon.retention.apply_retention``)
    PIXEL_DATA_DELETED = "pixel_data_deleted"
    #: a study was purged on request; the event has no study and names it only by a hash of its
    #: Study Instance UID (``daemon.retention.purge_study``)
    PURGED = "purged"
    #: scoring failed for a cause that passes (storage full, an I/O error): the study waits in
    #: ``complete`` until ``retry_at`` (``daemon.worker``)
    RETRY = "retry"
    #: one output (the summary image, KOS, GSPS or an HL7 message) could not be made; the SR and
    #: the others were (``daemon.products``)
    OUTPUT_FAILED = "output_failed"
    #: the study's header values were cleaned for the outputs (which attributes, never values)
    CLEANED = "cleaned"
    #: an instance named a SOP Instance UID already stored under another study or series, or
    #: with other bytes: refused and quarantined; the event is on the stored study and names
    #: both studies' UIDs, or both copies' SHA-256 (``daemon.receiver``)
    CONFLICT = "conflict"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e],
                native_enum=False, length=32, validate_strings=True)


class Base(DeclarativeBase):
    pass


class Association(Base):
    """One DICOM association that brought instances; completion waits for its release."""

    __tablename__ = "association"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)  # released/aborted/...

    __table_args__ = (Index("ix_association_open", "ended_at"),)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), nullable=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState, "study_state"), index=True)
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: the association that brought the latest instance; completion waits for its release
    last_association_id: Mapped[int | None] = mapped_column(
        ForeignKey("association.id"), nullable=True
    )
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scored_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: bumped each time a late instance re-opens the study; a result belongs to one revision
    revision: Mapped[int] = mapped_column(Integer, default=1)
    #: scored ahead of the others (``urgency:`` in the config), and why; set at arrival
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    urgent_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: a ``complete`` study whose scoring failed for a cause that passes waits until then;
    #: ``retries`` counts those failures since it was last scored (the backoff doubles with it)
    retry_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    instances: Mapped[list[Instance]] = relationship(back_populates="study", order_by="Instance.id")
    results: Mapped[list[StudyResult]] = relationship(
        back_populates="study", order_by="StudyResult.id"
    )
    last_association: Mapped[Association | None] = relationship()


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: path relative to ``storage.path``
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id"), nullable=True)
    #: when retention deleted the file at ``path`` (``daemon.retention``); None while it is kept.
    #: The row, its path and size stay for the record. See :attr:`stored`.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    study: Mapped[Study] = relationship(back_populates="instances")

    @hybrid_property
    def stored(self) -> bool:
        """Whether the file at ``path`` is kept: never deleted by retention, or received again
        after it was (the receiver rewrites ``received_at`` and the file of a re-sent instance)."""
        return self.deleted_at is None or self.deleted_at < self.received_at

    @stored.inplace.expression
    @classmethod
    def _stored_expression(cls) -> ColumnElement[bool]:
        return or_(cls.deleted_at.is_(None), cls.deleted_at < cls.received_at)


class StudyResult(Base):
    """One scoring of one revision of a study; the newest is current, older ones superseded."""

    __tablename__ = "study_result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    study_revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    analysed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why not analysed
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    abnormal: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    priority: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sr_series_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: relative to ``storage.path``
    sr_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    series_description: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: the MURA study type its views' headers name (ELBOW ... WRIST); None when unmapped
    study_type: Mapped[str | None] = mapped_column(String(16), nullable=True)

    study: Mapped[Study] = relationship(back_populates="results")
    scores: Mapped[list[ImageScore]] = relationship(
        back_populates="result", order_by="ImageScore.id"
    )
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="result", order_by="Delivery.id"
    )
    outputs: Mapped[list[OutputObject]] = relationship(
        back_populates="result", order_by="OutputObject.id"
    )

    __table_args__ = (UniqueConstraint("study_id", "study_revision", name="uq_result_revision"),)


class ImageScore(Base):
    __tablename__ = "image_score"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(
        ForeignKey("study_result.id", ondelete="CASCADE"), index=True
    )
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id", ondelete="CASCADE"))
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the view's heatmap on the model's last feature grid (``dicom_io.heatmaps.encode_heatmap``:
    #: float16, zlib-compressed, with its shape), from the pass that scored it; None when not scored
    heatmap: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    heatmap_method: Mapped[str | None] = mapped_column(String(16), nullable=True)  # cam | gradcam
    #: how the view became model input (``dicom_io.geometry.ViewGeometry.to_dict``, JSON): maps the
    #: heatmap onto the view
    geometry: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the heatmap's peak region in the original image's pixel coordinates (columns, rows)
    peak_x0: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_y0: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_x1: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_y1: Mapped[float | None] = mapped_column(Float, nullable=True)

    result: Mapped[StudyResult] = relationship(back_populates="scores")
    instance: Mapped[Instance] = relationship()

    @property
    def peak_box(self) -> tuple[float, float, float, float] | None:
        box = (self.peak_x0, self.peak_y0, self.peak_x1, self.peak_y1)
        return None if any(v is None for v in box) else box  # type: ignore[return-value]


class OutputObject(Base):
    """One object a result produced: the SR, the summary image(s), a KOS, a GSPS, an HL7 message."""

    __tablename__ = "output_object"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(
        ForeignKey("study_result.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # SR | SC | KOS | GSPS | ORM | OMI | ORU
    #: the SOP Instance UID of a DICOM object, the Message Control ID of an HL7 message
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str] = mapped_column(Text)  # relative to storage.path
    #: e.g. the priority an HL7 order update raises the order to
    detail: Mapped[str | None] = mapped_column(String(64), nullable=True)

    result: Mapped[StudyResult] = relationship(back_populates="outputs")


class Delivery(Base):
    """One object to one destination: the persisted retry queue."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(
        ForeignKey("study_result.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(64))
    object_kind: Mapped[str] = mapped_column(String(16))  # an OutputObject kind: SR, SC, ...
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to storage.path
    priority: Mapped[str] = mapped_column(String(16))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: a dead delivery given its one more attempt once its destination accepted other objects
    #: (``daemon.retry.revive_deliveries``): never revived twice
    revived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    result: Mapped[StudyResult] = relationship(back_populates="deliveries")

    __table_args__ = (
        Index("ix_delivery_due", "state", "next_attempt_at"),
        UniqueConstraint("result_id", "destination", "sop_instance_uid", name="uq_delivery_object"),
    )


class Event(Base):
    """The audit trail: what happened to which study, when, and why. Never patient data."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("study.id", ondelete="SET NULL"), nullable=True, index=True
    )
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind, "event_kind"))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebSession(Base):
    """A dashboard login (``web.sessions``): the cookie carries an id, the row is named by its
    SHA-256 digest. Logging out deletes the row, so the cookie is refused by every node sharing
    this database; rows past ``expires_at`` are deleted at the next login."""

    __tablename__ = "web_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex SHA-256 of the cookie's id
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
