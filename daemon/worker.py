"""Scoring: a complete study becomes a result, an SR on disk, and one delivery per destination.

:func:`score_study` is an idempotent function of a study id: it reads its input from the
database and storage and writes its output back in one transaction. If the study was re-opened
by a late instance while it was being scored, the work is thrown away and the study is scored
again once it is complete. A crash at any point is recovered by :func:`recover` at start-up.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from sqlalchemy import or_, select, update

from daemon.config import Config
from daemon.logs import setup_logging, study_logger
from daemon.products import SELECTOR, OutputFailure, Product, ViewProduct, make_products
from daemon.retry import TRANSIENT, retry_delay, will_retry
from db import (
    Association,
    Database,
    Delivery,
    DeliveryState,
    Event,
    EventKind,
    ImageScore,
    OutputObject,
    Study,
    StudyResult,
    StudyState,
    utcnow,
)
from dicom_io.deflate import read_file
from dicom_io.demographics import Note, notes_text, text_values
from dicom_io.errors import DicomIOError, StorageError, describe
from dicom_io.bodypart import study_type_of_study
from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import PreparePool, PreparedView
from dicom_io.reasons import not_analysed_reason
from dicom_io.geometry import ViewGeometry, peak_box
from dicom_io.heatmaps import encode_heatmap
from dicom_io.sr import PRIORITIES, TriageReport, ViewScore, series_description
from dicom_io.storage import durable_write, output_relpath
from daemon import metrics
from inference.engine import InferenceEngine
from inference.policy import is_abnormal, priority_for, study_probability

log = logging.getLogger(__name__)

#: radtriage's own UID root is not registered; UIDs come from pydicom's generator (UUID-derived)
#: and the device UID from the model card, so it changes with the model version.
DEVICE_UID_NAMESPACE = "radtriage-device"


class ViewScorer(Protocol):
    """What the worker needs of a model: probabilities for prepared views, and its card."""

    @property
    def card(self): ...  # noqa: D102 - an inference.model.ModelCard

    def score(self, views: Sequence[np.ndarray]) -> list[float]: ...


@dataclass(frozen=True)
class ViewOutcome:
    instance_id: int
    sop_instance_uid: str
    probability: float | None
    error: str | None
    study_type: str | None = None
    frames: int = 1
    #: the heatmap of the view's most suspicious frame, on the model's feature grid, and how that
    #: frame became model input; None when not scored or the scorer gives no heatmaps
    heatmap: np.ndarray | None = None
    geometry: ViewGeometry | None = None
    #: the heatmap's peak region in the original image's pixel coordinates
    box: tuple[float, float, float, float] | None = None
    thumbnail: np.ndarray | None = None


def device_uid(name: str, version: str) -> str:
    """A stable UID for (model name, version): the SR's device observer."""
    return generate_uid(entropy_srcs=[DEVICE_UID_NAMESPACE, name, version])


#: How a view's error begins when the scoring itself failed (not the view): such a study is
#: also recorded as failed (an event and its state reason), though its not-analysed SR is sent.
SCORING_FAILURES = ("inference failed", "scoring timed out")

#: Views prepared and scored together: the model input of one chunk (224 px: 0.6 MB a view) is
#: all a study holds in memory at once, whatever its size; what it keeps of every view is the
#: score, the heatmap (7 x 7) and the thumbnail for the summary image.
VIEWS_PER_CHUNK = 32


def as_engine(scorer: ViewScorer, config: Config | None = None) -> InferenceEngine:
    """``scorer`` if it is an engine already, else a new engine over it (batch size: the
    scorer's own, else ``model.batch_size``). The caller closes what it made."""
    if isinstance(scorer, InferenceEngine):
        return scorer
    return InferenceEngine(
        scorer, **engine_options(config, getattr(scorer, "batch_size", None)))


def engine_options(config: Config | None, batch_size: int | None = None) -> dict:
    """The engine's settings from the config (``model:`` and ``urgency.aging_s``)."""
    if config is None:
        return {"batch_size": batch_size}
    m = config.model
    return {"batch_size": batch_size or m.batch_size, "max_wait_ms": m.max_wait_ms,
            "queue_views": m.queue_views, "aging_s": config.urgency.aging_s}


@dataclass
class StageTimes:
    """Seconds a study spent preparing its views and waiting for the model (metrics)."""

    prepare: float = 0.0
    inference: float = 0.0


def score_views(scorer: ViewScorer, pool: PreparePool,
                paths: Sequence[tuple[int, str, Path]], *, heatmap: str | None = "cam",
                timeout_s: float | None = None, rank: int = 1,
                times: StageTimes | None = None, phi: bool = False) -> list[ViewOutcome]:
    """Prepare the views in the pool and score their frames in the inference engine, chunk by
    chunk (:data:`VIEWS_PER_CHUNK`), keeping every reason a view is not scored.

    ``scorer``: an :class:`InferenceEngine` (the daemon's, shared by every study in flight, so
    this study's views share batches with others), or a plain scorer, which gets an engine of
    its own for the call. ``rank``: 0 for an urgent study, 1 for the others.

    A multi-frame view (``decoding.multiframe: frames``) scores the mean of its frames, and
    shows the heatmap of its most suspicious frame. ``heatmap``: cam, gradcam or None.
    ``timeout_s`` (``limits.study_timeout_s``): what is not prepared or scored by then is "not
    analysed: scoring timed out" (views still queued are taken back from the engine). If the
    model raises, no view of the study keeps a score: the study is reported not analysed with
    the error (its type and where it was raised; its message too when ``phi``: see
    :func:`dicom_io.errors.describe`).
    """
    engine = as_engine(scorer)
    try:
        return _score_views(engine, pool, paths, heatmap, timeout_s, rank, times or StageTimes(),
                            phi)
    finally:
        if engine is not scorer:
            engine.close()


def _score_views(engine: InferenceEngine, pool: PreparePool, paths: Sequence[tuple[int, str, Path]],
                 heatmap: str | None, timeout_s: float | None, rank: int, times: StageTimes,
                 phi: bool = False) -> list[ViewOutcome]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    outcomes: list[ViewOutcome] = []
    failure = None
    timed_out = (f"scoring timed out: not scored within limits.study_timeout_s ({timeout_s:g} s)"
                 if timeout_s is not None else "")
    for first in range(0, len(paths), VIEWS_PER_CHUNK):
        chunk = paths[first:first + VIEWS_PER_CHUNK]
        left = None if deadline is None else deadline - time.monotonic()
        if failure is not None or (left is not None and left <= 0):
            outcomes += [ViewOutcome(i, uid, None, failure or timed_out) for i, uid, _ in chunk]
            continue
        t0 = time.perf_counter()
        prepared = pool.map([p for _, _, p in chunk], timeout_s=left)
        t1 = time.perf_counter()
        frames: list[np.ndarray] = []
        owner: list[tuple[int, int]] = []
        for i, view in enumerate(prepared):
            if view.tensor is not None:
                frames.extend(view.tensor)
                owner.extend((i, f) for f in range(view.frames))
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        futures = engine.submit(frames, heatmap=heatmap, rank=rank, timeout_s=left)
        error = None
        scored: list[tuple[float, np.ndarray | None]] = []
        for n, future in enumerate(futures):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                scored.append(future.result(timeout=left))
            except (FutureTimeout, TimeoutError):
                for rest in futures[n:]:
                    rest.cancel()  # still queued: the engine skips it
                error = timed_out
                log.error("%s; %d of %d frame(s) of this chunk scored", error, n, len(frames))
                break
            except Exception as exc:  # the model failed on this study: report it as not analysed
                for rest in futures[n:]:
                    rest.cancel()
                scored = []
                error = failure = f"inference failed: {describe(exc, phi=phi)}"
                log.error("%s", error)
                break
        times.prepare += t1 - t0
        times.inference += time.perf_counter() - t1
        outcomes += _chunk_outcomes(chunk, prepared, owner, scored, error)
    if failure is not None:  # no view keeps a score from a model that failed on the study
        outcomes = [ViewOutcome(o.instance_id, o.sop_instance_uid, None, o.error or failure,
                                study_type=o.study_type, frames=o.frames) for o in outcomes]
    return outcomes


def _chunk_outcomes(chunk: Sequence[tuple[int, str, Path]], prepared: Sequence[PreparedView],
                    owner: Sequence[tuple[int, int]],
                    scored: Sequence[tuple[float, np.ndarray | None]], error: str | None
                    ) -> list[ViewOutcome]:
    per_view: dict[int, list[tuple[float, int, np.ndarray | None]]] = {}
    for (i, f), (p, m) in zip(owner, scored):
        per_view.setdefault(i, []).append((p, f, m))
    outcomes = []
    for i, ((instance_id, sop_uid, _), view) in enumerate(zip(chunk, prepared)):
        scores = per_view.get(i)
        hm = geometry = box = None
        if scores:
            _, frame, hm = max(scores, key=lambda t: t[0])
            geometry = view.geometry[frame] if frame < len(view.geometry) else None
            if hm is not None and geometry is not None:
                box = geometry.input_box_to_original(peak_box(hm, geometry.size))
        outcomes.append(ViewOutcome(
            instance_id, sop_uid,
            probability=float(np.mean([p for p, _, _ in scores])) if scores else None,
            error=view.error or (error if view.tensor is not None and not scores else None),
            study_type=view.study_type, frames=view.frames, heatmap=hm, geometry=geometry,
            box=box, thumbnail=view.thumbnail if scores else None))
    return outcomes


def build_pool(config: Config, prep: Preprocessing) -> PreparePool:
    """The preparation pool the config asks for (processes start on first use)."""
    d = config.decoding
    opts = DecodeOptions(working_size=d.working_size, reduced_decode=d.reduced_decode,
                         multiframe=d.multiframe, max_pixels=config.limits.max_pixels)
    log_setup = functools.partial(setup_logging, config.logging.level, phi=config.logging.phi,
                                  file=config.logging.file)
    return PreparePool(prep, opts, config.scoring.rules(), workers=d.workers, log_setup=log_setup)


class StudyScorer:
    """Everything needed to score a study; one per process."""

    def __init__(self, config: Config, db: Database, scorer: ViewScorer, *,
                 clock: Callable[[], dt.datetime] = utcnow, pool: PreparePool | None = None) -> None:
        """``scorer``: the daemon's :class:`InferenceEngine` (shared), or a plain scorer, which
        gets an engine of its own (closed by :meth:`close`)."""
        self.config = config
        self.db = db
        self.engine = as_engine(scorer, config)
        self._owns_engine = self.engine is not scorer
        self.scorer = self.engine
        self.clock = clock
        self.root = config.storage.path
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else build_pool(
            config, Preprocessing.from_card(scorer.card.preprocessing))

    def close(self) -> None:
        """Stop the preparation processes and the engine this scorer started (a pool or engine
        passed in is the caller's)."""
        if self._owns_engine:
            self.engine.close()
        if self._owns_pool:
            self.pool.close()

    def claim_next(self) -> tuple[int, int] | None:
        """Move the next complete study to scoring; return (study id, revision).

        Urgent studies first, oldest first, with ageing: a routine study completed more than
        ``urgency.aging_s`` before the oldest urgent one goes first, so none starves. A study
        waiting to be tried again (:meth:`fail`) is claimed once its ``retry_at`` has passed.
        """
        now = self.clock()

        def oldest(s, urgent: bool):  # type: ignore[no-untyped-def]
            return s.scalars(
                select(Study).where(Study.state == StudyState.COMPLETE, Study.urgent.is_(urgent),
                                    or_(Study.retry_at.is_(None), Study.retry_at <= now))
                .order_by(Study.completed_at, Study.id).limit(1)
                .with_for_update(skip_locked=True)
            ).first()

        with self.db.session() as s:
            urgent, routine = oldest(s, True), oldest(s, False)
            study = urgent or routine
            if urgent is not None and routine is not None and routine.completed_at is not None \
                    and urgent.completed_at is not None:
                aging = dt.timedelta(seconds=self.config.urgency.aging_s)
                if routine.completed_at + aging < urgent.completed_at:
                    study = routine
            if study is None:
                return None
            study.state = StudyState.SCORING
            return study.id, study.revision

    def score_study(self, study_id: int, revision: int) -> int | None:
        """Score a claimed study; return the new result id, or None when the work was stale."""
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None or study.state != StudyState.SCORING or study.revision != revision:
                return None
            study_uid = study.study_instance_uid
            rank = 0 if study.urgent else 1
            waited = {"complete": _seconds(study.last_received_at, study.completed_at),
                      "queued": _seconds(study.completed_at, self.clock())}
            last_received = study.last_received_at
            rows = [(i.id, i.sop_instance_uid, self.root / i.path) for i in study.instances if i.stored]
            previous = s.scalars(select(StudyResult).where(
                StudyResult.study_id == study_id, StudyResult.superseded.is_(False))
                .order_by(StudyResult.id.desc())).first()
            previous_sr = previous.sr_path if previous is not None else None
            raised = self._hl7_priorities_sent(s, study_id)
        slog = study_logger(log, study_uid)
        card = self.scorer.card
        times = StageTimes()
        phi = self.config.logging.phi
        outcomes = score_views(self.engine, self.pool, rows, heatmap=self.config.model.heatmap,
                               timeout_s=self.config.limits.study_timeout_s, rank=rank, times=times,
                               phi=phi)
        t_products = time.perf_counter()
        probability = study_probability(o.probability for o in outcomes)
        threshold = self.config.model.operating_threshold(card)
        rules = [(r.min_probability, r.priority) for r in self.config.priority.rules]
        priority = priority_for(probability, rules, self.config.priority.default)
        # the full reason; the Series Description says it with a code (dicom_io.reasons)
        reason = None if probability is not None else not_analysed_reason(o.error for o in outcomes)
        study_type = study_type_of_study(o.study_type for o in outcomes)
        report = TriageReport(
            probability=probability,
            abnormal=None if probability is None else is_abnormal(probability, threshold),
            priority=priority,
            threshold=threshold,
            algorithm_name=card.display_name,
            algorithm_version=card.version,
            views=tuple(ViewScore(o.sop_instance_uid, o.probability, o.error, box=o.box,
                                  study_type=o.study_type) for o in outcomes),
            reason=reason,
            notice=card.notice,
            study_type=study_type,
        )
        sources, headers = [], {}
        max_instance = int(self.config.limits.max_instance_mb * 1024 * 1024)
        unread: list[BaseException] = []
        for _, sop_uid, path in rows:
            try:
                # a deflated instance is inflated as a stream, its pixels never (issue 17)
                headers[sop_uid] = ds = read_file(path, stop_before_pixels=True,
                                                  limit=max_instance)
                sources.append(ds)
            except (OSError, InvalidDicomError, ValueError, DicomIOError) as exc:
                unread.append(exc)
                slog.warning("instance %s cannot be referenced in the outputs: %s", sop_uid,
                             describe(exc, phi=phi))
        if not sources:
            if unread and all(isinstance(e, OSError) for e in unread):  # the volume, not the files
                raise StorageError(f"no stored instance of the study can be read: "
                                   f"{describe(unread[0])}")
            raise DicomIOError("no stored instance of the study can be read")
        predecessor = None
        if previous_sr:
            try:
                predecessor = dcmread(self.root / previous_sr, stop_before_pixels=True)
            except (OSError, InvalidDicomError, ValueError) as exc:
                slog.warning("the SR this one replaces cannot be read, so it is not named: %s",
                             describe(exc, phi=phi))
        views = [ViewProduct(o.sop_instance_uid, o.probability, o.error, o.heatmap, o.geometry,
                             o.thumbnail, o.box, _view_label(n, headers.get(o.sop_instance_uid),
                                                             o.study_type))
                 for n, o in enumerate(outcomes, start=1)]
        hl7_dests = [d for d in self.config.destinations if d.type == "hl7"]
        raise_to = _raise_to(report.priority, sources[0], raised, hl7_dests) if hl7_dests else {}
        made = make_products(self.config, report, sources, views,
                             device_observer_uid=device_uid(card.name, card.version),
                             predecessor=predecessor, hl7_raise_to=raise_to, now=self.clock())
        if made.notes:
            slog.warning("header values cleaned for the outputs: %s", notes_text(made.notes))
        for failure in made.failures:
            slog.warning("%s", failure)
        written: list[tuple[Product, str]] = []
        try:  # all or nothing: a write that fails (storage full) is a cause that passes, retried
            for product in made.products:
                relpath = output_relpath(study_uid, product.uid, product.suffix)
                durable_write(self.root, relpath, [product.data])
                written.append((product, relpath))
        except BaseException:
            for _, relpath in written:  # nothing half-made is left behind; scored again later
                (self.root / relpath).unlink(missing_ok=True)
            raise
        result_id = self._record(study_id, revision, report, outcomes, written, slog,
                                 failures=made.failures, notes=made.notes)
        if result_id is not None:
            waited.update(prepare=times.prepare, inference=times.inference,
                          products=time.perf_counter() - t_products,
                          total=_seconds(last_received, self.clock()))
            for stage, seconds in waited.items():
                if seconds is not None:
                    metrics.STAGE_SECONDS.labels(stage).observe(seconds)
            metrics.STUDIES_SCORED.labels(report.priority).inc()
            slog.info("scored in %s", ", ".join(f"{k} {v:.2f} s" for k, v in waited.items()
                                                if v is not None))
        return result_id

    @staticmethod
    def _hl7_priorities_sent(s, study_id: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
        """HL7 destination -> the most urgent priority an order update already carried (or is
        queued to) for this study: what the never-lower rule compares with."""
        rows = s.execute(
            select(Delivery.destination, OutputObject.detail)
            .join(OutputObject, OutputObject.uid == Delivery.sop_instance_uid)
            .join(StudyResult, StudyResult.id == Delivery.result_id)
            .where(StudyResult.study_id == study_id, OutputObject.kind.in_(("ORM", "OMI")),
                   Delivery.state.in_((DeliveryState.PENDING, DeliveryState.SENDING,
                                       DeliveryState.DELIVERED)))).all()
        best: dict[str, str] = {}
        for dest, detail in rows:
            if detail in PRIORITIES and (dest not in best
                                         or PRIORITIES.index(detail) < PRIORITIES.index(best[dest])):
                best[dest] = detail
        return best

    def _record(self, study_id: int, revision: int, report: TriageReport,
                outcomes: Sequence[ViewOutcome], written: Sequence[tuple[Product, str]],
                slog: logging.LoggerAdapter, *, failures: Sequence[OutputFailure] = (),
                notes: Sequence[Note] = ()) -> int | None:
        now = self.clock()
        sr, sr_path = written[0]
        with self.db.session() as s:
            study = s.get(Study, study_id, with_for_update=True)
            if study is None or study.state != StudyState.SCORING or study.revision != revision:
                slog.info("study changed while it was scored; result discarded, it will be scored again")
                for _, relpath in written:
                    (self.root / relpath).unlink(missing_ok=True)
                return None
            old = s.scalars(select(StudyResult.id).where(
                StudyResult.study_id == study_id, StudyResult.superseded.is_(False))).all()
            if old:
                s.execute(update(StudyResult).where(StudyResult.id.in_(old)).values(superseded=True))
                s.execute(update(Delivery).where(Delivery.result_id.in_(old),
                                                 Delivery.state == DeliveryState.PENDING)
                          .values(state=DeliveryState.SUPERSEDED))
            result = StudyResult(
                study_id=study_id, study_revision=revision, created_at=now,
                analysed=report.probability is not None, reason=report.reason,
                probability=report.probability, abnormal=report.abnormal, priority=report.priority,
                threshold=report.threshold, model_name=report.algorithm_name,
                model_version=report.algorithm_version, superseded=False,
                sr_sop_instance_uid=sr.uid, sr_series_instance_uid=sr.series_instance_uid,
                sr_path=sr_path, series_description=series_description(report),
                study_type=report.study_type,
            )
            s.add(result)
            s.flush()
            for o in outcomes:
                box = o.box or (None, None, None, None)
                s.add(ImageScore(
                    result_id=result.id, instance_id=o.instance_id, probability=o.probability,
                    error=o.error,
                    heatmap=encode_heatmap(o.heatmap) if o.heatmap is not None else None,
                    heatmap_method=self.config.model.heatmap if o.heatmap is not None else None,
                    geometry=json.dumps(o.geometry.to_dict()) if o.geometry is not None else None,
                    peak_x0=box[0], peak_y0=box[1], peak_x1=box[2], peak_y1=box[3]))
            deliveries = 0
            for product, relpath in written:
                s.add(OutputObject(result_id=result.id, kind=product.kind, uid=product.uid,
                                   series_instance_uid=product.series_instance_uid, path=relpath,
                                   detail=product.detail))
                for dest in self.config.destinations:
                    if not dest.takes(SELECTOR[product.kind]) or (
                            product.destination is not None and product.destination != dest.name):
                        continue
                    s.add(Delivery(result_id=result.id, destination=dest.name,
                                   object_kind=product.kind, sop_instance_uid=product.uid,
                                   path=relpath, priority=report.priority,
                                   state=DeliveryState.PENDING, attempts=0, next_attempt_at=now,
                                   created_at=now))
                    deliveries += 1
            study.scored_at = now
            study.state = StudyState.DISPATCHING if deliveries else StudyState.SCORED
            study.retry_at, study.retries = None, 0
            if notes:
                s.add(Event(at=now, study_id=study_id, kind=EventKind.CLEANED,
                            detail=f"header values cleaned for the outputs: {notes_text(notes)}"[:2000]))
            for failure in failures:  # the SR and the other outputs went on without it
                s.add(Event(at=now, study_id=study_id, kind=EventKind.OUTPUT_FAILED,
                            detail=str(failure)[:2000]))
            kind = EventKind.SCORED if report.probability is not None else EventKind.NOT_ANALYSED
            made = ", ".join(f"{n} {k}" for k, n in _counts(p.kind for p, _ in written))
            s.add(Event(at=now, study_id=study_id, kind=kind,
                        detail=f"{result.series_description} ({made})"))
            failure = next((o.error for o in outcomes if o.error and o.error.startswith(
                SCORING_FAILURES)), None) if report.probability is None else None
            study.state_reason = failure[:2000] if failure else None
            if failure:  # the model failed on this study: on record, and the SR says not analysed
                s.add(Event(at=now, study_id=study_id, kind=EventKind.FAILED,
                            detail=f"not analysed: {failure}"[:2000]))
            result_id = result.id
        for o in outcomes:
            if o.error and report.probability is not None:
                slog.info("view %s not analysed: %s", o.sop_instance_uid, o.error)
        if report.probability is None:
            slog.warning("not analysed: %s", report.reason)
        else:
            slog.info("scored %.3f over %d view(s): %s", report.probability,
                      sum(o.probability is not None for o in outcomes), result.series_description)
        return result_id

    def fail(self, study_id: int, revision: int, exc: BaseException) -> bool:
        """Record that scoring the claimed study raised ``exc``; return whether it will be
        tried again.

        A cause that passes (:func:`daemon.retry.will_retry`: the storage volume full, another
        I/O error, the database connection lost) puts the study back to ``complete`` until ``retry_at``, after
        ``scoring.retry_initial_s`` doubling with each failure in a row up to ``retry_max_s``
        (:func:`retry_delay`): an event ``retry`` says why and when. Any other error fails it
        for good (``failed``). The reason and the event name the error's type, never a value
        from the headers (:func:`dicom_io.errors.describe`) unless ``logging.phi``.
        """
        now = self.clock()
        reason = describe(exc, phi=self.config.logging.phi)
        with self.db.session() as s:
            study = s.get(Study, study_id, with_for_update=True)
            if study is None or study.revision != revision or study.state != StudyState.SCORING:
                return False
            if not will_retry(exc, study.retries):
                if isinstance(exc, TRANSIENT):
                    reason = f"{reason}; given up after {study.retries + 1} tries"
                study.state = StudyState.FAILED
                study.state_reason = reason[:2000]
                s.add(Event(at=now, study_id=study_id, kind=EventKind.FAILED, detail=reason[:2000]))
                return False
            wait = retry_delay(study.retries, self.config.scoring.retry_initial_s,
                               self.config.scoring.retry_max_s)
            study.retries += 1
            study.retry_at = now + dt.timedelta(seconds=wait)
            study.state = StudyState.COMPLETE
            why = f"outputs not written ({reason}); try {study.retries + 1} in {wait:g} s"
            study.state_reason = why[:2000]
            s.add(Event(at=now, study_id=study_id, kind=EventKind.RETRY, detail=why[:2000]))
        return True


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    return None if start is None or end is None else max(0.0, (end - start).total_seconds())


def _counts(kinds: Iterable[str]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
    return list(seen.items())


def _view_label(number: int, ds: Dataset | None, study_type: str | None) -> str:
    """What the summary image calls a view: its number, modality, view position, body part;
    never patient data."""
    parts = [f"view {number}"]
    if ds is not None:  # cleaned: several values joined, never a list's repr
        parts += [" ".join(text_values(ds, k)) for k in ("Modality", "ViewPosition")]
    parts.append(study_type or "")
    return "  ".join(p for p in parts if p)


def _raise_to(priority: str, first: Dataset, already: dict[str, str], destinations
              ) -> dict[str, str | None]:
    """HL7 destination -> the priority its order update raises the order to, or None (never
    lower it): the order's own priority is read once from the study's headers."""
    from daemon.products import hl7_order
    from dicom_io.hl7 import should_raise_priority

    try:
        own = hl7_order(first).order_priority
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # the order's priority cannot be read: never risk lowering it (no order update); the
        # result (ORU) and every other output are still made
        log.warning("the order's priority cannot be read from the study's headers (%s): no "
                    "order update is sent", describe(exc))
        return {d.name: None for d in destinations}
    return {d.name: priority if should_raise_priority(priority, own, already.get(d.name)) else None
            for d in destinations}


def recover(db: Database, now: dt.datetime) -> None:
    """At start-up: undo what a crash interrupted, so every stage runs again.

    Open associations died with the old process; studies being scored go back to complete;
    deliveries being sent go back to pending (the PACS stores an SR once per SOP Instance UID).
    """
    with db.session() as s:
        n_assoc = s.execute(update(Association).where(Association.ended_at.is_(None))
                            .values(ended_at=now, end_reason="interrupted")).rowcount
        scoring = s.scalars(select(Study).where(Study.state == StudyState.SCORING)).all()
        for study in scoring:
            study.state = StudyState.COMPLETE
            s.add(Event(at=now, study_id=study.id, kind=EventKind.RECOVERED,
                        detail="scoring interrupted by a restart; scored again"))
        n_send = s.execute(update(Delivery).where(Delivery.state == DeliveryState.SENDING)
                           .values(state=DeliveryState.PENDING, next_attempt_at=now)).rowcount
    if n_assoc or scoring or n_send:
        log.warning("recovered after an unclean stop: %d association(s) closed, %d study(ies) "
                    "to score again, %d delivery(ies) to send again", n_assoc, len(scoring), n_send)


class ScoringWorker:
    """Scores complete studies until stopped, ``threads`` at a time (``model.studies_in_flight``),
    so the views of several studies share the engine's batches; woken by the completion sweep."""

    def __init__(self, study_scorer: StudyScorer, threads: int = 1) -> None:
        self.study_scorer = study_scorer
        self._threads = [threading.Thread(target=self.run, name=f"radtriage-scoring-{n}", daemon=True)
                         for n in range(max(1, threads))]
        self._wake = threading.Condition()
        self._wakes = 0
        self._stopping = threading.Event()
        self.on_scored: Callable[[], None] | None = None

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            if t.ident is not None:  # a thread never started (start-up failed) has nothing to join
                t.join(timeout)

    def is_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wake(self) -> None:
        with self._wake:
            self._wakes += 1
            self._wake.notify_all()

    def stop(self) -> None:
        """Finish the studies in hand, then stop."""
        self._stopping.set()
        self.wake()

    def run(self) -> None:
        seen = 0
        while not self._stopping.is_set():
            with self._wake:
                if self._wakes == seen:
                    self._wake.wait(timeout=1.0)
                seen = self._wakes
            while not self._stopping.is_set() and self.run_once():
                pass

    def run_once(self) -> bool:
        """Score one complete study if there is one; return whether there was."""
        try:
            claimed = self.study_scorer.claim_next()
        except Exception:  # a database outage must not kill the worker thread; retried next tick
            log.exception("cannot look for complete studies")
            return False
        if claimed is None:
            return False
        study_id, revision = claimed
        try:
            self.study_scorer.score_study(study_id, revision)
        except Exception as exc:  # one study's failure is recorded; the others go on
            self._failed(study_id, revision, exc)
        if self.on_scored is not None:
            self.on_scored()
        return True

    def _failed(self, study_id: int, revision: int, exc: Exception) -> None:
        """Log and record a study's failure: the error's type and where it was raised, and the
        traceback's frames; its message (which may quote a header value) only with
        ``logging.phi``. A cause that passes (:data:`daemon.retry.TRANSIENT`) is a warning, the
        study to be scored again."""
        phi = self.study_scorer.config.logging.phi
        if isinstance(exc, TRANSIENT):
            log.warning("study %s: its outputs could not be written (%s); it will be scored "
                        "again", study_id, describe(exc, phi=phi))
        else:  # daemon.logs writes the traceback's frames, its messages only with logging.phi
            log.error("scoring study %s failed: %s", study_id, describe(exc, phi=phi),
                      exc_info=exc)
        try:
            self.study_scorer.fail(study_id, revision, exc)
        except Exception as record_exc:
            log.error("cannot record the failure of study %s: %s", study_id,
                      describe(record_exc, phi=phi))
