"""Why a study was not analysed: the full reason, and a short code that fits a Series Description.

A study none of whose views could be scored is still reported ("NOT ANALYSED"). Its *reason*
is the views' own reasons, in full (:func:`not_analysed_reason`): it goes to the database
(``study_result.reason``), the SR's Comment, the summary image and the HL7 result. The Series
Description, which every viewer's series list shows, has room for 64 characters only, so it
carries a *code* from a closed vocabulary instead (:class:`NotAnalysed`,
:func:`not_analysed_code`): ``AI TRIAGE: NOT ANALYSED - DEMO MODEL - BODY PART``.

A view's reason is free text written where the view failed (:mod:`dicom_io.bodypart` selects,
:mod:`dicom_io.pixels` and :mod:`dicom_io.validate` read and decode, :mod:`dicom_io.prepare`
catches the rest, :mod:`daemon.worker` scores). The code is read from its stable beginning, or
from the setting it names (``limits.max_pixels``, ...), in :data:`VIEW_RULES`; anything else is
a view that could not be read or decoded (:attr:`NotAnalysed.UNREADABLE`), which is what every
other reason those modules give is about. ``tests/dicom_io/test_reasons.py`` runs the real
modules on bad views to keep the two in step.

Pure functions; no I/O, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum

__all__ = ["VIEW_RULES", "NotAnalysed", "not_analysed_code", "not_analysed_reason", "view_code"]


class NotAnalysed(str, Enum):
    """Why a study was not analysed, as its Series Description says it (the value)."""

    #: the study has no stored view to score
    NO_IMAGES = "NO IMAGES"
    #: the model failed on the study ("inference failed: ..."); the study is recorded as failed
    MODEL_ERROR = "MODEL ERROR"
    #: not prepared or scored within ``limits.study_timeout_s``
    TIMED_OUT = "TIMED OUT"
    #: the views' Modality is not in ``scoring.modalities``
    MODALITY = "MODALITY"
    #: the views' Image Type is one of ``scoring.excluded_image_types`` (a localizer, ...)
    IMAGE_TYPE = "IMAGE TYPE"
    #: FOR PROCESSING images, and ``scoring.score_for_processing`` is false
    FOR_PROCESSING = "FOR PROCESSING"
    #: no supported body part (``scoring.unmapped_body_part: not_analysed``)
    BODY_PART = "BODY PART"
    #: multi-frame images, and ``decoding.multiframe: refuse``
    MULTIFRAME = "MULTIFRAME"
    #: more than ``limits.max_pixels`` or ``limits.max_instance_mb``, or no memory to decode it
    TOO_LARGE = "TOO LARGE"
    #: well-formed pixels radtriage does not handle (a photometric interpretation, float pixels)
    UNSUPPORTED = "UNSUPPORTED IMAGE"
    #: the stored copy could not be read back from ``storage.path`` (an I/O error)
    STORAGE = "STORAGE ERROR"
    #: the file, its header or its pixel data cannot be read or decoded (malformed, truncated,
    #: a codec failed or crashed): every other reason a view is not scored
    UNREADABLE = "UNREADABLE"
    #: the views were not scored for different reasons (each view's is in the SR and the summary)
    MIXED = "NO SCORABLE VIEW"

    def __str__(self) -> str:
        return self.value


#: How a view's reason maps to a code: the first rule whose pattern it matches (``re.search``)
#: wins. The wording these match is what its writers promise to keep: a reason's beginning
#: (anchored) or the setting that refused the view.
VIEW_RULES: tuple[tuple[re.Pattern[str], NotAnalysed], ...] = tuple(
    (re.compile(pattern), code) for pattern, code in (
        # daemon.worker: the scoring itself failed (daemon.worker.SCORING_FAILURES)
        (r"^inference failed", NotAnalysed.MODEL_ERROR),
        (r"^scoring timed out", NotAnalysed.TIMED_OUT),
        # dicom_io.bodypart.select_view
        (r"^modality ", NotAnalysed.MODALITY),
        (r"^image type ", NotAnalysed.IMAGE_TYPE),
        (r"^for-processing images", NotAnalysed.FOR_PROCESSING),
        (r"^body part not supported", NotAnalysed.BODY_PART),
        # dicom_io.pixels.check_header, dicom_io.prepare.prepare_view
        (r"^multi-frame images", NotAnalysed.MULTIFRAME),
        (r"^not enough memory", NotAnalysed.TOO_LARGE),
        (r"^photometric interpretation ", NotAnalysed.UNSUPPORTED),
        (r"^no pixel data \((Double)?FloatPixelData", NotAnalysed.UNSUPPORTED),
        (r"^cannot read the stored file", NotAnalysed.STORAGE),
        # the setting a reason names, wherever it stands
        (r"\blimits\.study_timeout_s\b", NotAnalysed.TIMED_OUT),
        (r"\bscoring\.modalities\b", NotAnalysed.MODALITY),
        (r"\bdecoding\.multiframe\b", NotAnalysed.MULTIFRAME),
        (r"\blimits\.max_pixels\b", NotAnalysed.TOO_LARGE),
        (r"\blimits\.max_instance_mb\b", NotAnalysed.TOO_LARGE),
    ))

#: Failures of the scoring, not of the views: when one is among a study's codes it is the
#: study's, whatever else its views say (a view refused for its modality would not have been
#: scored either, but the others would have been). Most telling first.
_SCORING_FAILURES = (NotAnalysed.MODEL_ERROR, NotAnalysed.TIMED_OUT)


def view_code(error: str) -> NotAnalysed:
    """The code of one view's reason (:data:`VIEW_RULES`; :attr:`NotAnalysed.UNREADABLE` for
    any other)."""
    for pattern, code in VIEW_RULES:
        if pattern.search(error):
            return code
    return NotAnalysed.UNREADABLE


def not_analysed_code(errors: Iterable[str | None]) -> NotAnalysed:
    """The code of a study none of whose views was scored, from its views' reasons (one per
    view; None for a view without one).

    No view: :attr:`~NotAnalysed.NO_IMAGES`. A scoring failure (model error, then timed out)
    among them: that one. All views for the same reason: its code. Else
    :attr:`~NotAnalysed.MIXED`.
    """
    views = list(errors)
    if not views:
        return NotAnalysed.NO_IMAGES
    codes = {view_code(e) for e in views if e}
    for failure in _SCORING_FAILURES:
        if failure in codes:
            return failure
    if len(codes) == 1:
        return codes.pop()
    return NotAnalysed.MIXED


def not_analysed_reason(errors: Iterable[str | None]) -> str:
    """The full reason of a study none of whose views was scored: each distinct view reason
    once, sorted, e.g. ``"no view could be scored: body part not supported: 'SKULL'"``."""
    distinct = sorted({e for e in errors if e})
    if not distinct:
        return "no views"
    return "no view could be scored: " + "; ".join(distinct)
