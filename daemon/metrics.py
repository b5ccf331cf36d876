"""Prometheus metrics of the daemon, in one place (prometheus-client).

Every part of the daemon updates these from its own thread; ``/metrics`` (the web server)
exposes the default registry. Values measured from the database at scrape time (deliveries by
state, studies by state) are not here but in the web server's collector, so they are right
after a restart too. Label values are fixed, small sets: never a UID or a name from a header.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: seconds buckets from 10 ms to 10 min: a view's inference to a study waiting for a PACS
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

INSTANCES_RECEIVED = Counter(
    "radtriage_instances_received", "C-STORE requests answered, by outcome (stored, duplicate, "
    "refused, failed).", ["outcome"])
STUDIES_SCORED = Counter(
    "radtriage_studies_scored", "Studies scored, by the priority of their result.", ["priority"])
STAGE_SECONDS = Histogram(
    "radtriage_stage_seconds", "Seconds a study spends in each stage: complete (last instance to "
    "complete), queued (complete to claimed), prepare (decode and prepare its views), inference "
    "(its views in the model), products (SR, summary and the rest made and written), total "
    "(last instance to result recorded).", ["stage"], buckets=_SECONDS)
INFERENCE_SECONDS = Histogram(
    "radtriage_inference_batch_seconds", "Seconds the model took for one batch.", buckets=_SECONDS)
INFERENCE_BATCH_VIEWS = Histogram(
    "radtriage_inference_batch_views", "Views (frames) in one model batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
ENGINE_QUEUE_VIEWS = Gauge(
    "radtriage_engine_queue_views", "Prepared views waiting for the model.")
DELIVERIES = Counter(
    "radtriage_delivery_attempts", "Delivery attempts, by outcome (delivered, failed, dead).",
    ["outcome"])
ERRORS = Counter(
    "radtriage_errors", "Errors by kind (e.g. malformed_instance, storage, database, "
    "scoring, prepare, delivery).", ["kind"])
CONNECTIONS_REFUSED = Counter(
    "radtriage_connections_refused", "DICOM connections closed at the network edge "
    "(daemon.transport), by where: pending (over node.max_pending_*), request (no acceptable "
    "A-ASSOCIATE-RQ in time: too large, too slow, undecodable, TLS), busy "
    "(node.max_associations), pdu (a PDU refused after negotiation: too large, too slow, "
    "undecodable).", ["stage"])
CONTEXTS_REFUSED = Counter(
    "radtriage_contexts_refused", "SOP classes refused at association negotiation (the sender "
    "sees no presentation context), once per association and label: by sop_class (its name, "
    "e.g. MR Image Storage, when a known SOP class, else other) and reason (sop_class: not "
    "accepted here; transfer_syntax: none of those proposed can be decoded; rejected).",
    ["sop_class", "reason"])
WEB_LOGINS = Counter(
    "radtriage_web_logins", "Dashboard login attempts, by outcome (succeeded, failed, throttled).",
    ["outcome"])
