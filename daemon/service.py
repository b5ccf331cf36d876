"""The running daemon: wires config, database, model, receiver, scheduler, worker and dispatch.

``Service(config).start()`` runs the start-up checks (``daemon.startup``, shared with
``radtriage check-config``), brings everything up in dependency order and fails fast with one
line naming the setting (bad checkpoint, port in use, database unreachable). ``stop()`` stops
taking new associations, lets in-flight C-STOREs and the study being scored finish, and closes
down; after a failed start it closes only what was started.
"""

from __future__ import annotations

import datetime as dt

import logging
import signal
import threading
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from daemon.completion import sweep
from daemon.access import AccessError
from daemon.config import Config
from daemon.dispatch import Dispatcher
from daemon.receiver import Receiver
from daemon.retention import apply_retention
from daemon.retry import revive_deliveries
from daemon.startup import (FILE_CHECKS, StartupError, describe_url, load_model,
                            model_device, model_preprocessing, one_line)  # the first two imported from here too
from daemon import metrics
from daemon.worker import (ScoringWorker, StudyScorer, ViewScorer, as_engine, build_pool,
                           engine_options, recover)
from inference.engine import InferenceEngine
from db import Database, utcnow
from dicom_io.destinations import Destination, DicomStore
from dicom_io.errors import SendError
from dicom_io.prepare import PreparePool

log = logging.getLogger(__name__)


def load_scorer(config: Config) -> ViewScorer:
    """Load the configured checkpoint onto the configured device (torch imported only here)."""
    from inference.model import Scorer

    m = config.model
    model, card = load_model(config)
    device = model_device(config)
    if not card.trained:
        log.warning("serving UNTRAINED model %s %s because model.allow_untrained is true: "
                    "its scores mean nothing", card.name, card.version)
    log.info("model %s %s (%s) on %s", card.name, card.version, card.arch, device)
    if card.notice:
        log.warning("model %s %s: %s", card.name, card.version, card.notice)
    log.info("threshold %.4g (%s)", m.operating_threshold(card),
             "the model card's" if m.threshold is None else "model.threshold in config.yaml")
    from inference.model import resolve_compile

    try:
        scorer = Scorer(model, card, device=device, batch_size=m.batch_size,
                        cpu_threads=m.cpu_threads, precision=m.precision,
                        compile=resolve_compile(m.compile, device))
    except RuntimeError as exc:  # e.g. out of memory moving the model onto the GPU
        raise StartupError(f"model.device: cannot put the model on {device}: {one_line(exc)}") from exc
    if m.warm_up:
        seconds = scorer.warm_up()
        log.info("model warmed up in %.1f s", seconds)
    log.info("inference: %s; dynamic batching up to %d view(s) or %g ms", scorer.describe(),
             m.batch_size, m.max_wait_ms)
    return scorer


def build_engine(config: Config, scorer: ViewScorer | None = None) -> InferenceEngine:
    """The one engine every study in flight hands its views to, with its metrics, started.

    Without ``scorer`` the engine loads the configured model in its own thread
    (:func:`load_scorer`), so every torch operation runs there (``inference.engine``)."""
    def on_batch(views: int, seconds: float, queued: int) -> None:
        metrics.INFERENCE_SECONDS.observe(seconds)
        metrics.INFERENCE_BATCH_VIEWS.observe(views)
        metrics.ENGINE_QUEUE_VIEWS.set(queued)

    if scorer is not None:
        engine = as_engine(scorer, config)
    else:
        engine = InferenceEngine(factory=lambda: load_scorer(config), **engine_options(config))
    engine.on_batch = on_batch
    return engine.start()


def _tls(tls):  # type: ignore[no-untyped-def]
    from dicom_io.destinations import TLSOptions

    if tls is None:
        return None
    return TLSOptions(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                      check_hostname=tls.check_hostname)


def build_destination(d, config: Config) -> Destination:  # type: ignore[no-untyped-def]
    """One configured destination as the object that sends to it; StartupError when it cannot be
    (a certificate file that cannot be read)."""
    try:
        return _build_destination(d, config)
    except SendError as exc:
        reason = one_line(exc)
        reason = reason[len(d.name) + 2:] if reason.startswith(f"{d.name}: ") else reason
        raise StartupError(f"destinations: {d.name}: {reason}") from exc


def _build_destination(d, config: Config) -> Destination:  # type: ignore[no-untyped-def]
    from dicom_io.destinations import DicomWebStore, ReturnToSender

    timeout, calling = config.dispatch.timeout_s, config.dispatch.calling_ae_title
    if d.type == "dicom":
        return DicomStore(name=d.name, ae_title=d.ae_title, host=d.host, port=d.port,
                          calling_ae_title=calling, timeout_s=timeout, tls=_tls(d.tls))
    if d.type == "dicomweb":
        return DicomWebStore(name=d.name, url=d.url, timeout_s=timeout, headers=d.headers,
                             ca_file=d.ca_file, username=d.username, password=d.password)
    if d.type == "return_to_sender":
        return ReturnToSender(name=d.name, port=d.port, ae_title=d.ae_title,
                              calling_ae_title=calling, timeout_s=timeout, tls=_tls(d.tls))
    if d.type == "hl7":
        from dicom_io.hl7 import MLLPDestination

        return MLLPDestination(name=d.name, host=d.host, port=d.port, timeout_s=timeout)
    raise StartupError(f"destinations: {d.name}: unknown type {d.type!r}")


def build_destinations(config: Config) -> dict[str, Destination]:
    return {d.name: build_destination(d, config) for d in config.destinations}


class Service:
    """The daemon. ``start()`` brings it up or raises :class:`StartupError` (one line, naming
    the setting to fix); ``stop()`` closes whatever was started, also after a failed start."""

    def __init__(
        self,
        config: Config,
        *,
        scorer: ViewScorer | None = None,
        destinations: dict[str, Destination] | None = None,
        clock: Callable = utcnow,  # type: ignore[type-arg]
        source: str | None = None,
    ) -> None:
        """``source``: the config file's name as the admin gave it, for messages (``crop.yaml``)."""
        self.config = config
        self.clock = clock
        self.source = source
        self._scorer = scorer
        self._destinations = destinations
        self.db: Database | None = None
        self.receiver: Receiver | None = None
        self.worker: ScoringWorker | None = None  # set once its threads run
        self.pool: PreparePool | None = None
        self.engine: InferenceEngine | None = None
        self.dispatcher: Dispatcher | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.web = None  # web.server.WebServer, when web.enabled
        self._running = False
        self._stopped = threading.Event()

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        """Check, then start in dependency order: the checks that need no model first (a typo in
        a path costs no model load), the model, the database, and the listening sockets last."""
        cfg = self.config
        for check in FILE_CHECKS:  # daemon.startup: the same checks `check-config` runs
            check(cfg)
        destinations = self._destinations or build_destinations(cfg)
        try:
            cfg.storage.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"storage.path: cannot create {cfg.storage.path}: "
                               f"{exc.strerror or exc}") from exc
        self.engine = build_engine(cfg, self._scorer)  # loads the model in its own thread
        self.pool = build_pool(cfg, model_preprocessing(cfg, self.engine.card, self.source))
        p, o = self.pool.prep, self.pool.opts
        log.info("preprocessing %d px %s, crop %s, CLAHE %s; decoding at %s, reduced decoding %s, "
                 "multi-frame %s, %d preparation process(es)", p.size, p.resize,
                 "on" if p.crop else "off", "on" if p.clahe else "off",
                 f"{o.working_size} px" if o.working_size else "full size",
                 "on" if o.reduced_decode else "off", o.multiframe, self.pool.workers)
        self.db = self._database()
        self.dispatcher = Dispatcher(self.db, destinations, cfg.dispatch, cfg.storage.path,
                                     clock=self.clock)
        self.scheduler = self._scheduler()
        self.receiver = Receiver(cfg, self.db, clock=self.clock, on_released=self._released)
        try:
            self.receiver.start()
        except AccessError as exc:
            raise StartupError(one_line(exc)) from exc
        except OSError as exc:
            raise StartupError(
                f"node.port: cannot listen on {cfg.node.host}:{cfg.node.port}: {exc.strerror or exc}"
            ) from exc
        worker = ScoringWorker(StudyScorer(cfg, self.db, self.engine, clock=self.clock, pool=self.pool),
                               threads=cfg.model.studies_in_flight)
        worker.on_scored = self._dispatch_now
        worker.start()
        self.worker = worker
        self.scheduler.start()
        if cfg.web.enabled:
            self._start_web()
        self._running = True
        log.info("radtriage is running: AE %s, port %s, %d destination(s), storage %s, database %s",
                 cfg.node.ae_title, self.receiver.port, len(cfg.destinations), cfg.storage.path,
                 self.db.describe())

    def _database(self) -> Database:
        """The database, at the newest schema, with what a crash left behind recovered."""
        url = self.config.database.url
        try:
            db = Database(url)
        except (SQLAlchemyError, OSError, ImportError, ValueError) as exc:
            raise StartupError(f"database.url: cannot use {describe_url(url)}: "
                               f"{one_line(exc)}") from exc
        try:
            db.migrate()
            recover(db, self.clock())
        except (SQLAlchemyError, OSError) as exc:
            db.dispose()
            raise StartupError(f"database.url: cannot use {db.describe()}: {one_line(exc)}") from exc
        return db

    def _scheduler(self) -> BackgroundScheduler:
        """The periodic jobs (not started yet)."""
        cfg = self.config
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(self._completion_tick, "interval", seconds=cfg.completion.sweep_interval_s,
                          id="completion", max_instances=1, coalesce=True)
        scheduler.add_job(self._dispatch_tick, "interval", seconds=cfg.dispatch.interval_s,
                          id="dispatch", max_instances=1, coalesce=True)
        scheduler.add_job(self._retry_tick, "interval", seconds=cfg.scoring.retry_initial_s,
                          id="retry", max_instances=1, coalesce=True)
        if cfg.storage.retention_days > 0:
            scheduler.add_job(self._retention_tick, "interval", seconds=cfg.storage.retention_interval_s,
                              id="retention", max_instances=1, coalesce=True,
                              next_run_time=utcnow())  # and once at start
        return scheduler

    def _start_web(self) -> None:
        """The dashboard, JSON API and /metrics (web/), on web.host:web.port; uploads are
        scored by the daemon's engine, sharing batches with the studies in flight."""
        from web.app import WebContext, create_app
        from web.server import WebServer

        cfg = self.config
        receiver = self.receiver
        ctx = WebContext(config=cfg, db=self.db, scorer=self.engine, clock=self.clock, checks={
            "receiver": lambda: (receiver is not None and not self._stopped.is_set(),
                                 f"AE {cfg.node.ae_title} on port {receiver.port}" if receiver
                                 else "not started")})
        self.web = WebServer(create_app(ctx), cfg.web.host, cfg.web.port)
        try:
            self.web.start()
        except OSError as exc:
            self.web = None
            raise StartupError(f"web.port: cannot listen on {cfg.web.host}:{cfg.web.port}: "
                               f"{exc.strerror or exc}") from exc

    # -- jobs ------------------------------------------------------------------------------

    def _completion_tick(self) -> None:
        cfg = self.config.completion
        try:
            done = sweep(self.db, self.clock(), release_grace_s=cfg.release_grace_s, stable_s=cfg.stable_s)
        except SQLAlchemyError:
            log.exception("completion sweep failed; retried at the next tick")
            return
        if done and self.worker is not None:
            self.worker.wake()

    def _released(self) -> None:
        """An association ended: check completion the moment its study's grace period is over,
        rather than at the next periodic sweep."""
        if self.scheduler is not None and self.scheduler.running:
            at = utcnow() + dt.timedelta(seconds=self.config.completion.release_grace_s + 0.02)
            self.scheduler.add_job(self._completion_tick, "date", run_date=at, misfire_grace_time=60)

    def _dispatch_tick(self) -> None:
        try:
            self.dispatcher.run_due()
        except SQLAlchemyError:
            log.exception("dispatch failed; retried at the next tick")

    def _retry_tick(self) -> None:
        """Studies failed by a delivery that gave up go back to dispatching once its destination
        accepts objects again (``daemon.retry``)."""
        cfg = self.config
        try:
            revived = revive_deliveries(self.db, self.clock(), max_attempts=cfg.dispatch.max_attempts,
                                        initial_s=cfg.scoring.retry_initial_s,
                                        max_s=cfg.scoring.retry_max_s)
        except SQLAlchemyError:
            log.exception("retrying failed deliveries failed; retried at the next tick")
            return
        if revived:
            self._dispatch_now()

    def _retention_tick(self) -> None:
        try:
            report = apply_retention(self.db, self.config.storage.path, self.clock(),
                                     days=self.config.storage.retention_days,
                                     should_stop=self._stopped.is_set)
        except SQLAlchemyError:
            log.exception("retention failed; retried at the next tick")
            return
        if report.studies or report.errors:
            log.info("retention: %s", report.summary())

    def _dispatch_now(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            job = self.scheduler.get_job("dispatch")
            if job is not None:
                job.modify(next_run_time=utcnow())

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop in order: no new associations, finish scoring, finish sends, close the database.

        Safe on a service that failed to start: only what was started is stopped (a component
        is set on ``self`` once it runs, or once there is something to close)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._running:
            log.info("stopping: finishing in-flight work")
        else:
            log.info("start-up failed: closing what was started")
        if self.web is not None:
            self.web.stop()
            if self.web.app.state.ctx.upload_pool is not None:
                self.web.app.state.ctx.upload_pool.close()
        if self.receiver is not None:
            self.receiver.stop()
        if self.dispatcher is not None:
            self.dispatcher.stopping.set()
        if self.worker is not None:
            self.worker.stop()
            self.worker.join()
        if self.engine is not None:
            self.engine.close()
        if self.pool is not None:
            self.pool.close()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.db is not None:
            self.db.dispose()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly; a repeated signal is logged, not fatal."""
        done = threading.Event()

        def _signal(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if done.is_set():
                log.warning("received %s again: still finishing in-flight work", name)
            else:
                log.info("received %s", name)
            done.set()

        previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not done.wait(1.0):
                pass
            self.stop()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
