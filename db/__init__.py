"""radtriage's database: SQLAlchemy 2 models, the engine and session factory, Alembic migrations."""

from db.models import (
    Association,
    Base,
    Delivery,
    DeliveryState,
    Event,
    EventKind,
    ImageScore,
    Instance,
    OutputObject,
    Study,
    StudyResult,
    StudyState,
    WebSession,
)
from db.session import Database, utcnow

__all__ = [
    "Association", "Base", "Database", "Delivery", "DeliveryState", "Event", "EventKind",
    "ImageScore", "Instance", "OutputObject", "Study", "StudyResult", "StudyState", "utcnow",
    "WebSession",
]
