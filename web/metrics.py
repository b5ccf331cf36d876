"""``/metrics``: the daemon's own counters and histograms (:mod:`daemon.metrics`, the default
registry) plus what the database says at scrape time, so the numbers are right after a restart.

From the database, on each scrape:

* ``radtriage_studies{state}`` and ``radtriage_deliveries{state}``: rows by state;
* ``radtriage_queue_depth{queue}``: ``deliveries`` (pending deliveries) and ``scoring``
  (complete studies not yet claimed by the scoring worker);
* ``radtriage_oldest_pending_delivery_age_seconds``: how long the oldest pending delivery has
  waited (0 when none);
* ``radtriage_database_up``: 1 when the queries above worked, else 0 (and none of them).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from db import Database
from web.queries import counts

log = logging.getLogger(__name__)


class DatabaseCollector(Collector):
    def __init__(self, db: Database, clock: Callable[[], dt.datetime]) -> None:
        self.db = db
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("radtriage_database_up",
                               "Whether the database answered the scrape's queries.")
        try:
            c = counts(self.db)
        except SQLAlchemyError as exc:
            log.warning("/metrics: the database did not answer: %s", str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        studies = GaugeMetricFamily("radtriage_studies", "Studies in the database, by state.",
                                    labels=["state"])
        for state, n in c["studies"].items():
            studies.add_metric([state], n)
        yield studies
        deliveries = GaugeMetricFamily("radtriage_deliveries",
                                       "Deliveries in the database, by state.", labels=["state"])
        for state, n in c["deliveries"].items():
            deliveries.add_metric([state], n)
        yield deliveries
        depth = GaugeMetricFamily("radtriage_queue_depth", "Work waiting: deliveries (pending "
                                  "deliveries) and scoring (complete studies not yet scored).",
                                  labels=["queue"])
        depth.add_metric(["deliveries"], c["deliveries"]["pending"])
        depth.add_metric(["scoring"], c["studies"]["complete"])
        yield depth
        oldest = c["oldest_pending_delivery"]
        age = GaugeMetricFamily("radtriage_oldest_pending_delivery_age_seconds",
                                "How long the oldest pending delivery has waited (0: none).")
        age.add_metric([], max(0.0, (self.clock() - oldest).total_seconds()) if oldest else 0.0)
        yield age


class Exposition:
    """The text ``/metrics`` returns: the process-wide registry, then this app's database view."""

    def __init__(self, db: Database, clock: Callable[[], dt.datetime]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DatabaseCollector(db, clock))

    def render(self) -> bytes:
        return generate_latest(REGISTRY) + generate_latest(self.registry)
