"""The daemon's configuration: one YAML file, validated once at start into a typed object.

Every setting is documented here (type, default, constraint) and again, for admins, in the
commented ``config.yaml`` at the top of the repository, which holds exactly these defaults.

Loading rules:

* unknown keys, wrong types and impossible values are errors; each is reported on one line
  naming the key, the value given and what is allowed (:class:`ConfigError`);
* environment variables override single keys: ``RADTRIAGE_DATABASE__URL=postgresql://...``
  sets ``database.url`` (``__`` separates levels; values are parsed as YAML scalars, so
  ``RADTRIAGE_NODE__PORT=11113`` is an integer). ``RADTRIAGE_CONFIG`` is reserved for the path
  of the file itself;
* relative paths (storage, checkpoint, log file, SQLite database) resolve against the folder of
  the config file, not the working directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from dicom_io.bodypart import DEFAULT_BODY_PARTS, DEFAULT_IGNORED_WORDS, SelectionRules
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Priority = Literal["HIGH", "ELEVATED", "ROUTINE"]
#: Priorities from most to least urgent; a policy may never rank a lower probability higher.
PRIORITY_ORDER: tuple[str, ...] = ("HIGH", "ELEVATED", "ROUTINE")

ENV_PREFIX = "RADTRIAGE_"
ENV_CONFIG_PATH = "RADTRIAGE_CONFIG"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: no backslash, no control chars
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1 to 16 printable characters, not all spaces, no backslash")
    return value.strip()


#: An AE title, validated where it appears so an error names the offending item.
AETitle = Annotated[str, AfterValidator(_check_ae_title)]


def _check_host_pattern(value: str) -> str:
    """A calling host: an IP address, a network in CIDR form, or a host name."""
    text = value.strip()
    try:
        ipaddress.ip_network(text, strict=False)
        return text
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text):
        raise ValueError(f"{text!r} is not an IP address, a network (10.0.0.0/24) or a host name")
    return text.lower()


HostPattern = Annotated[str, AfterValidator(_check_host_pattern)]


class NodeTLSConfig(_Section):
    """DICOM over TLS for the associations the PACS opens to us."""

    cert_file: Path = Field(description="Our server certificate (PEM), with its chain.")
    key_file: Path = Field(description="Its private key (PEM).")
    ca_file: Path | None = Field(None, description="CA certificates (PEM) that client certificates "
                                 "must chain to; needed with require_client_cert.")
    require_client_cert: bool = Field(False, description="Refuse a peer without a certificate "
                                      "that chains to ca_file (mutual TLS).")

    @model_validator(mode="after")
    def _client_ca(self) -> "NodeTLSConfig":
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file, the CA client certificates chain to")
        return self


class NodeConfig(_Section):
    """The DICOM node radtriage presents to the PACS (the Storage SCP)."""

    ae_title: AETitle = Field("RADTRIAGE", description="Our AE title; the PACS must call us by it.")
    require_called_ae: bool = Field(
        True, description="Reject an association that calls another AE title than ae_title "
        "(A-ASSOCIATE-RJ: called AE title not recognised; logged). false: any called AE title "
        "is accepted (e.g. a router that calls every node by one name). Example: false.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(11112, ge=1, le=65535, description="TCP port to listen on.")
    allowed_calling_aes: list[AETitle] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty allows any (warned at start-up).",
    )
    calling_hosts: dict[AETitle, list[HostPattern]] = Field(
        default_factory=dict,
        description="Calling AE title -> the addresses, networks or host names it must call from.",
    )
    tls: NodeTLSConfig | None = Field(None, description="DICOM over TLS; null: plain TCP.")
    max_associations: int = Field(
        16, ge=1, le=1000,
        description="Concurrent negotiated associations; connections still negotiating do not count.")
    max_pdu_size: int = Field(
        1_048_576, ge=0, description="Largest PDU we accept, bytes; 0 means unlimited (a single "
        "PDU is then still refused past limits.max_instance_mb + 1 MiB)."
    )
    max_request_pdu_size: int = Field(
        262_144, ge=4096, le=16_777_216,
        description="Largest A-ASSOCIATE-RQ accepted, bytes; a larger one is refused at its header "
        "(128 presentation contexts with 10 transfer syntaxes each take about 40 KB).")
    acse_timeout_s: float = Field(
        30, gt=0, description="A connection must deliver its whole A-ASSOCIATE-RQ (after the TLS "
        "handshake) within this many seconds of its connect, in total; also the negotiation timeout.")
    pdu_timeout_s: float = Field(
        30, gt=0, le=3600,
        description="Once a PDU has begun to arrive, all of it must arrive within this, seconds.")
    max_pending_per_address: int = Field(
        16, ge=1, le=10_000,
        description="Connections from one address that have not yet sent their A-ASSOCIATE-RQ "
        "(16: a sender may open all of max_associations at once).")
    max_pending_connections: int = Field(
        64, ge=1, le=100_000,
        description="Connections from all addresses that have not yet sent their A-ASSOCIATE-RQ.")
    dimse_timeout_s: float = Field(60, gt=0, description="Timeout waiting for a DIMSE message.")
    network_timeout_s: float = Field(120, gt=0, description="Idle association timeout.")
    shutdown_grace_s: float = Field(
        30, ge=0, le=3600,
        description="On SIGTERM/SIGINT, how long open associations may take to finish.",
    )

    @model_validator(mode="after")
    def _hosts_known(self) -> "NodeConfig":
        unknown = sorted(set(self.calling_hosts) - set(self.allowed_calling_aes))
        if self.allowed_calling_aes and unknown:
            raise ValueError(f"calling_hosts names AE title(s) not in allowed_calling_aes: "
                             f"{', '.join(unknown)}")
        return self



class StorageConfig(_Section):
    path: Path = Field(Path("var/storage"), description="Where received instances and outputs live.")
    min_free_mb: int = Field(
        512, ge=0, description="Below this much free space new C-STOREs are refused (0xA700)."
    )
    retention_days: float = Field(
        0, ge=0, description="Received instances older than this are deleted (results and the "
        "audit trail are kept); 0 keeps them forever.")
    retention_interval_s: float = Field(3600, gt=0, le=86400 * 7,
                                        description="How often the retention job runs.")


class DatabaseConfig(_Section):
    url: str = Field(
        "sqlite:///var/radtriage.db",
        description="SQLAlchemy URL: sqlite:///FILE (WAL mode) or postgresql://user@host/db.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class CompletionConfig(_Section):
    release_grace_s: float = Field(
        0.5, ge=0, le=3600,
        description="After the association that brought a study is released, wait this long "
        "for more instances before the study is complete.",
    )
    stable_s: float = Field(
        30, gt=0, le=86400,
        description="A study with no new instance for this long is complete, released or not.",
    )
    sweep_interval_s: float = Field(0.5, gt=0, le=60, description="How often completion is checked.")


class ModelConfig(_Section):
    checkpoint: Path = Field(
        Path("models/radtriage-demo.pt"), description="radtriage checkpoint file (.pt)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present.")
    batch_size: int = Field(
        8, ge=1, le=4096, description="Most views in one model batch, from any studies in flight "
        "(8 is fastest on a 2-core CPU; 64-256 on a GPU).")
    max_wait_ms: float = Field(
        10, ge=0, le=10_000, description="How long the first view of a batch waits for more views "
        "(of any study) before the batch runs smaller.")
    queue_views: int = Field(
        0, ge=0, le=1_000_000, description="Prepared views that may wait for the model; when it is "
        "full, preparation waits (back-pressure). 0: four batches.")
    studies_in_flight: int = Field(
        2, ge=1, le=256, description="Studies prepared and scored at once; their views share the "
        "model's batches.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a CUDA GPU (fp16 where it has no bf16), float32 "
        "on the CPU.")
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune",
                     "max-autotune-no-cudagraphs"] = Field(
        "auto", description="torch.compile mode; auto: 'default' on CUDA, off on the CPU. A model "
        "that cannot be compiled is served eager, with a warning.")
    warm_up: bool = Field(
        True, description="Score blank views at start-up so the first study is not slow.")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Study probability at or above which the study is abnormal; "
        "null: the model card's threshold (the operating point its maker validated)."
    )
    cpu_threads: int = Field(0, ge=0, le=256, description="torch threads on the CPU; 0: torch's default.")
    heatmap: Literal["cam", "gradcam"] = Field(
        "cam", description="cam: the exact class activation map, from the scoring pass; gradcam: "
        "Grad-CAM (a backward pass more)."
    )
    allow_untrained: bool = Field(
        False,
        description="Serve a checkpoint whose card says it was never trained (plumbing tests only; "
        "every output then names the model as untrained).",
    )

    def operating_threshold(self, card: Any) -> float:
        """The threshold in force: ``threshold`` where set, else ``card.threshold`` (the loaded
        model card's)."""
        return float(card.threshold) if self.threshold is None else self.threshold


class PreprocessingConfig(_Section):
    """How a view becomes model input; must equal what the model's card says it was trained with."""

    size: int = Field(224, ge=32, le=2048, description="Model input: size x size pixels.")
    resize: Literal["squash", "letterbox"] = Field(
        "squash", description="squash: stretched to a square (the MURA recipe); letterbox: "
        "aspect kept, padded black.")
    crop: bool = Field(True, description="Crop to the anatomy (collimation borders and burned-in "
                       "text fall away) before resizing.")
    clahe: bool = Field(False, description="Contrast-limited adaptive histogram equalisation.")
    clahe_clip_limit: float = Field(2.0, gt=0, le=100, description="CLAHE clip limit.")
    clahe_tile_grid: int = Field(8, ge=1, le=64, description="CLAHE tiles per side.")


class DecodingConfig(_Section):
    """Run-time pixel choices that are not part of the model."""

    working_size: int = Field(
        512, ge=0, le=16384,
        description="Shorter side (pixels) at which views are windowed and cropped; 0: full size. "
        "Reached by the JPEG 2000 5/3 wavelet low-pass, then an area average.")
    reduced_decode: bool = Field(
        True, description="Decode a lossless JPEG 2000 / HTJ2K view only to the resolution level "
        "the working image is made from: the identical tensor, 12x (JPEG 2000) and 5x (HTJ2K) "
        "faster for a 2k x 2k CR; false: decoded in full, same result. Lossy codestreams and JPEG "
        "are always decoded in full.")
    multiframe: Literal["refuse", "frames"] = Field(
        "refuse", description="A multi-frame instance: refused (not analysed), or every frame "
        "scored and the instance's probability the mean of its frames.")
    workers: int = Field(
        0, ge=0, le=256, description="Processes that decode and prepare views; 0: one per core, "
        "1: in the scoring thread.")


class LimitsConfig(_Section):
    max_pixels: int = Field(
        50_000_000, ge=1, description="Rows x Columns x frames above this is not decoded (not analysed); "
                                      "a deflated image above it is refused at receive time (0xA700).")
    max_instance_mb: float = Field(
        1024, gt=0, description="A received instance larger than this, or a deflated one inflating to "
                                "more, is refused (0xA700).")
    study_timeout_s: float = Field(
        600, gt=0, description="A study not scored within this is failed and reported not analysed.")


def _check_upper(values: list[str]) -> list[str]:
    return [v.strip().upper() for v in values if v.strip()]


MuraStudyType = Literal["ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST"]


class ScoringConfig(_Section):
    """What gets scored, and the MURA study type of what does."""

    modalities: Annotated[list[str], AfterValidator(_check_upper)] = Field(
        default_factory=lambda: ["CR", "DX"], min_length=1,
        description="Modalities (0008,0060) that are scored; others are reported not analysed.")
    excluded_image_types: Annotated[list[str], AfterValidator(_check_upper)] = Field(
        default_factory=lambda: ["LOCALIZER"],
        description="A view whose Image Type (0008,0008) holds any of these is not scored.")
    score_for_processing: bool = Field(
        False, description="Score DX 'FOR PROCESSING' (raw detector) images too.")
    unmapped_body_part: Literal["score", "not_analysed"] = Field(
        "score", description="A radiograph whose body part is not in body_parts: scored with the "
        "default model, or reported 'not analysed: body part not supported'.")
    ignored_words: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORED_WORDS),
        description="Words dropped before matching (laterality, views).")
    body_parts: dict[MuraStudyType, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_BODY_PARTS.items()},
        description="MURA study type -> words and phrases of Body Part Examined, Protocol Name, "
        "Series and Study Description that name it (case and accents ignored).")
    retry_initial_s: float = Field(
        30, gt=0, le=86400, description="A study whose outputs could not be written for a cause "
        "that passes (storage full, another I/O error) waits this long, then is scored again; "
        "the wait doubles with each failure in a row. Also how often studies failed by a "
        "delivery that gave up are looked at, to send them again once the destination accepts "
        "objects (daemon.retry).")
    retry_max_s: float = Field(
        600, gt=0, le=86400, description="The longest such wait: a study is tried again at least "
        "this often until it is scored.")

    @model_validator(mode="after")
    def _table(self) -> "ScoringConfig":
        self.rules()  # a phrase under two study types, or one with no letters: a ValueError
        return self

    def rules(self) -> SelectionRules:
        return SelectionRules(
            modalities=tuple(self.modalities), excluded_image_types=tuple(self.excluded_image_types),
            score_for_processing=self.score_for_processing,
            unmapped_body_part=self.unmapped_body_part,
            body_parts={k: tuple(v) for k, v in self.body_parts.items()},
            ignored_words=tuple(self.ignored_words),
        )


class UrgencyConfig(_Section):
    """Which studies are scored first: urgent ones are HIGH in the scoring queue, the rest
    ROUTINE. Known at arrival, from the sender; the result's priority flag comes later."""

    c_store_priority: bool = Field(
        True, description="A C-STORE request sent with Priority HIGH (0x0002) makes its study urgent.")
    procedure_priorities: Annotated[list[str], AfterValidator(_check_upper)] = Field(
        default_factory=lambda: ["STAT"],
        description="Requested Procedure Priority (0040,1003) values, at the top level or in the "
        "Request Attributes Sequence, that make a study urgent (DICOM: STAT, HIGH, ROUTINE, MEDIUM, LOW).")
    calling_ae_titles: list[AETitle] = Field(
        default_factory=list,
        description="Calling AE titles whose studies are urgent (e.g. the emergency department's "
        "modalities).")
    aging_s: float = Field(
        30, ge=0, le=86400, description="A ROUTINE study waits at most this much longer for urgent "
        "ones than it would with no urgent work (urgent first, nothing starves).")


class PriorityRule(_Section):
    min_probability: float = Field(ge=0, le=1)
    priority: Priority


class PriorityConfig(_Section):
    rules: list[PriorityRule] = Field(
        default_factory=lambda: [
            PriorityRule(min_probability=0.8, priority="HIGH"),
            PriorityRule(min_probability=0.5, priority="ELEVATED"),
        ],
        description="The first rule (highest min_probability first) that the study probability "
        "reaches sets its priority.",
    )
    default: Priority = Field("ROUTINE", description="Priority when no rule matches.")

    @model_validator(mode="after")
    def _monotonic(self) -> "PriorityConfig":
        ranked = sorted(self.rules, key=lambda r: -r.min_probability)
        levels = [PRIORITY_ORDER.index(r.priority) for r in ranked] + [
            PRIORITY_ORDER.index(self.default)
        ]
        if any(b < a for a, b in zip(levels, levels[1:])):
            shown = ", ".join(f"{r.min_probability}->{r.priority}" for r in ranked)
            raise ValueError(
                f"rules ({shown}, default {self.default}): a higher min_probability must never "
                "give a lower priority (HIGH > ELEVATED > ROUTINE, default the lowest)"
            )
        probs = [r.min_probability for r in ranked]
        if len(set(probs)) != len(probs):
            raise ValueError("two rules have the same min_probability")
        return self


ObjectKind = Literal["sr", "summary", "kos", "gsps", "order", "result"]
#: What each kind of destination can take; ``objects`` defaults to all of it (that is enabled).
DESTINATION_OBJECTS: dict[str, tuple[str, ...]] = {
    "dicom": ("sr", "summary", "kos", "gsps"),
    "dicomweb": ("sr", "summary", "kos", "gsps"),
    "return_to_sender": ("sr", "summary", "kos", "gsps"),
    "hl7": ("order", "result"),
}
#: The keys each kind needs, and the keys it may have besides name, type and objects.
_DESTINATION_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dicom": (("ae_title", "host", "port"), ("tls",)),
    "dicomweb": (("url",), ("username", "password", "headers", "ca_file")),
    "return_to_sender": (("port",), ("ae_title", "tls")),
    "hl7": (("host", "port"), ("message", "receiving_application", "receiving_facility")),
}
#: The keys every destination has, whatever its type.
DESTINATION_COMMON_KEYS = ("name", "type", "objects")


def destination_keys(kind: str) -> tuple[str, ...]:
    """The keys a destination of type ``kind`` takes (a KeyError for an unknown type): the
    common ones, then those it needs, then those it may have. One :class:`Destination` model
    holds every type's fields; these are the ones that mean something for ``kind`` (what the
    "allowed here" hint lists and what the effective configuration shows)."""
    required, optional = _DESTINATION_KEYS[kind]
    return (*DESTINATION_COMMON_KEYS, *required, *optional)


class TLSConfig(_Section):
    """TLS for a DICOM destination: verify the peer against ``ca_file``; present our certificate."""

    ca_file: Path | None = Field(None, description="CA certificates (PEM) the peer must chain to; "
                                 "null: the system's.")
    cert_file: Path | None = Field(None, description="Our client certificate (PEM), if the peer asks.")
    key_file: Path | None = Field(None, description="Its private key (PEM).")
    check_hostname: bool = Field(True, description="The peer's certificate must name its host.")

    @model_validator(mode="after")
    def _pair(self) -> "TLSConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Destination(_Section):
    """Where results go. ``type`` says how; each type takes its own keys (config.yaml lists them)."""

    name: str = Field(description="Unique name, used in logs and the delivery queue.")
    type: Literal["dicom", "dicomweb", "hl7", "return_to_sender"] = "dicom"
    objects: list[ObjectKind] | None = Field(
        None, description="What this destination is sent; null: all its type can take.")
    ae_title: AETitle | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: TLSConfig | None = None
    url: str | None = None
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] | None = None
    ca_file: Path | None = None
    message: Literal["ORM^O01", "OMI^O23"] = "ORM^O01"
    receiving_application: str = "RIS"
    receiving_facility: str = "RIS"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '_', '.', '-' only, at most 64")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("a DICOMweb base URL: http(s)://host[:port]/path")
        return value

    @model_validator(mode="after")
    def _keys_of_type(self) -> "Destination":
        required, optional = _DESTINATION_KEYS[self.type]
        missing = [k for k in required if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.type} destination needs {', '.join(missing)}")
        given = {k for k in self.model_fields_set} - set(DESTINATION_COMMON_KEYS)
        stray = sorted(given - set(required) - set(optional))
        if stray:
            raise ValueError(f"a {self.type} destination does not take {', '.join(stray)}; it takes "
                             f"{', '.join(required + optional)} (and {', '.join(DESTINATION_COMMON_KEYS)})")
        if self.objects is not None:
            wrong = [o for o in self.objects if o not in DESTINATION_OBJECTS[self.type]]
            if wrong:
                raise ValueError(f"a {self.type} destination cannot take {', '.join(wrong)}; "
                                 f"it takes {', '.join(DESTINATION_OBJECTS[self.type])}")
        return self

    def resolved(self, anchor) -> "Destination":  # type: ignore[no-untyped-def]
        """A copy with its certificate paths anchored at the config's folder."""
        update: dict[str, Any] = {}
        if self.ca_file is not None:
            update["ca_file"] = anchor(self.ca_file)
        if self.tls is not None:
            update["tls"] = self.tls.model_copy(update={
                k: anchor(getattr(self.tls, k)) for k in ("ca_file", "cert_file", "key_file")
                if getattr(self.tls, k) is not None})
        return self.model_copy(update=update) if update else self

    def takes(self, kind: str) -> bool:
        """Whether objects of ``kind`` (sr, summary, kos, gsps, order, result) go here."""
        return kind in (self.objects if self.objects is not None else DESTINATION_OBJECTS[self.type])


class DispatchConfig(_Section):
    interval_s: float = Field(1, gt=0, le=3600, description="How often the delivery queue is polled.")
    backoff_initial_s: float = Field(5, gt=0, description="Wait before the first retry.")
    backoff_max_s: float = Field(300, gt=0, description="Longest wait between retries.")
    max_attempts: int = Field(
        100, ge=1, description="After this many failed attempts a delivery is dead (kept, shown)."
    )
    timeout_s: float = Field(30, gt=0, description="Network timeout of one send.")
    calling_ae_title: AETitle = Field("RADTRIAGE", description="Our AE title when we send.")

    @model_validator(mode="after")
    def _backoff(self) -> "DispatchConfig":
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self


class ReportConfig(_Section):
    sop_class: Literal["comprehensive3d", "comprehensive"] = Field(
        "comprehensive3d", description="comprehensive for archives that predate Comprehensive 3D SR."
    )
    series_number: int = Field(9901, ge=1, le=2**31 - 1, description="Series Number of the SR.")
    manufacturer: str = Field("radtriage", min_length=1, max_length=64)
    summary: Literal["study", "per_view", "off"] = Field(
        "study", description="study: one summary Secondary Capture per study; per_view: one "
        "overlay image per view; off: none."
    )
    summary_series_number: int = Field(9902, ge=1, le=2**31 - 1)

    @field_validator("summary", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare off as false
    key_objects: bool = Field(False, description="A Key Object Selection (Of Interest) of the "
                              "abnormal views and the SR, for an abnormal study.")
    key_objects_series_number: int = Field(9903, ge=1, le=2**31 - 1)
    presentation_state: bool = Field(False, description="A GSPS with each scored view's peak "
                                     "region as a graphic that can be toggled.")
    presentation_state_series_number: int = Field(9904, ge=1, le=2**31 - 1)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    phi: bool = Field(False, description="Allow patient names and IDs in logs.")
    file: Path | None = Field(None, description="Log file; null logs to standard error.")


#: What ``radtriage web-password`` writes: scrypt$N$r$p$salt$key (salt and key base64).
_SCRYPT_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$")


def _check_secret_hash(value: str | None) -> str | None:
    if value is None:
        return None
    m = _SCRYPT_HASH.match(value.strip())
    if not m or int(m.group(1)) < 2 or int(m.group(1)) & (int(m.group(1)) - 1):
        raise ValueError("not a hash radtriage made: run `radtriage web-password` (or "
                         "`radtriage web-password --token`) and paste the scrypt$... line it prints")
    return value.strip()


def _check_proxy(value: str) -> str:
    """A trusted proxy: an IP address or a network in CIDR form (no host names: the peer of a
    connection is an address, and a name would have to be resolved to compare it)."""
    text = value.strip()
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or a network (10.0.0.0/24)") from None
    return text


class WebConfig(_Section):
    """The operators' dashboard, JSON API, /metrics, /healthz and /readyz (one HTTP server)."""

    enabled: bool = Field(False, description="Serve the dashboard; needs password_hash or token_hash.")
    host: str = Field("127.0.0.1", description="Address to listen on; loopback by default (put a "
                      "TLS reverse proxy in front to reach it from other machines).")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the dashboard.")
    password_hash: Annotated[str | None, AfterValidator(_check_secret_hash)] = Field(
        None, description="scrypt hash of the admin password (`radtriage web-password`); "
        "null: no password login.")
    token_hash: Annotated[str | None, AfterValidator(_check_secret_hash)] = Field(
        None, description="scrypt hash of an API token (`radtriage web-password --token`) that "
        "scripts and Prometheus send as `Authorization: Bearer TOKEN`; null: none.")
    session_lifetime_s: float = Field(
        8 * 3600, ge=60, le=30 * 86400, description="A login lasts this long, then the user "
        "logs in again (absolute, not sliding).")
    secret_key: str | None = Field(
        None, min_length=32, description="Key that signs session cookies (32+ characters; set it "
        "from the environment); null: a random key per start, so a restart logs everyone out.")
    secure_cookies: bool = Field(False, description="Mark cookies Secure (HTTPS only): set it "
                                 "when a TLS reverse proxy serves the dashboard.")
    upload_max_mb: float = Field(64, gt=0, le=4096, description="Largest upload on the upload "
                                 "page, all files together; counted as the body arrives (413).")
    trusted_proxies: list[Annotated[str, AfterValidator(_check_proxy)]] = Field(
        default_factory=list, description="Addresses or networks (CIDR) of the reverse proxies "
        "whose X-Forwarded-For and X-Forwarded-Proto are believed; empty: none, the peer of "
        "the connection is the client (example: [127.0.0.1] for nginx on the same machine).")

    @model_validator(mode="after")
    def _some_login(self) -> "WebConfig":
        if self.enabled and self.password_hash is None and self.token_hash is None:
            raise ValueError("web.enabled needs password_hash or token_hash: make one with "
                             "`radtriage web-password` (nobody could log in otherwise)")
        return self


class Config(_Section):
    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    urgency: UrgencyConfig = Field(default_factory=UrgencyConfig)
    priority: PriorityConfig = Field(default_factory=PriorityConfig)
    destinations: list[Destination] = Field(default_factory=list)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    web: WebConfig = Field(default_factory=WebConfig)

    @field_validator("destinations")
    @classmethod
    def _unique(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(dupes)}")
        return value

    def resolved(self, base: Path) -> "Config":
        """Return a copy whose relative paths are anchored at ``base`` (the config's folder)."""

        def anchor(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        url = self.database.url
        m = re.match(r"^(sqlite(\+\w+)?:///)(.+)$", url)
        if m and m.group(3) != ":memory:" and not m.group(3).startswith("/"):
            url = m.group(1) + str(anchor(Path(m.group(3))))
        node = self.node
        if node.tls is not None:
            tls = node.tls
            node = node.model_copy(update={"tls": tls.model_copy(update={
                "cert_file": anchor(tls.cert_file), "key_file": anchor(tls.key_file),
                "ca_file": anchor(tls.ca_file) if tls.ca_file else None})})
        return self.model_copy(
            update={
                "node": node,
                "storage": self.storage.model_copy(update={"path": anchor(self.storage.path)}),
                "database": self.database.model_copy(update={"url": url}),
                "model": self.model.model_copy(update={"checkpoint": anchor(self.model.checkpoint)}),
                "destinations": [d.resolved(anchor) for d in self.destinations],
                "logging": self.logging.model_copy(
                    update={"file": anchor(self.logging.file) if self.logging.file else None}
                ),
            }
        )


# ---------------------------------------------------------------------------------------------
# loading


def _allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...], data: Any = None) -> list[str]:
    """Walk the model tree along ``loc`` and list the keys allowed at its parent. ``data``, the
    input being validated, is walked alongside: a destination allows the keys of its own
    ``type`` (:func:`destination_keys`), not every type's."""
    current: Any = model
    for part in loc[:-1]:
        data = _item(data, part)
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    if current is Destination and isinstance(data, Mapping):
        kind = data.get("type", Destination.model_fields["type"].default)
        if isinstance(kind, str) and kind in _DESTINATION_KEYS:
            return sorted(destination_keys(kind))
    return sorted(current.model_fields) if current is not None else []


def _item(data: Any, part: Any) -> Any:
    """``data[part]`` of the input being validated, or None where it has no such item."""
    if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
        return data[part]
    if isinstance(part, str) and isinstance(data, Mapping):
        return data.get(part)
    return None


def _format_error(err: Mapping[str, Any], env_keys: Mapping[str, str], data: Any = None) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    for dotted, var in env_keys.items():
        if key == dotted or key.startswith(dotted + "."):
            key = f"{key} (from {var})"
            break
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc, data)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{key}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if isinstance(value, dict):  # a section's own check: name the item, not its type
        named = f" ({value['name']!r})" if isinstance(value.get("name"), str) else ""
        return f"{key}{named}: {msg}"
    shown = repr(value) if not isinstance(value, list) else type(value).__name__
    return f"{key} = {shown}: {msg}"


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[str, list[str], str]]:
    """The ``RADTRIAGE_SECTION__KEY`` variables as (variable, lower-cased key path, raw value)."""
    out = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if keys:
            out.append((name, keys, raw))
    return out


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``RADTRIAGE_SECTION__KEY`` overrides applied.

    Keys are lower-cased; values are parsed as YAML scalars. The caller's dict is not changed.
    """
    out = dict(data)
    for _name, keys, raw in _env_overrides(environ):
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            node[key] = dict(child) if isinstance(child, dict) else {}
            node = node[key]
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def parse_config(
    data: Any, *, source: str = "config", base: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate ``data`` (already parsed YAML) into a :class:`Config`; raise :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level) = {type(data).__name__}: must be a mapping of sections"])
    env = os.environ if environ is None else environ
    data = apply_env(data, env)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        env_keys = {".".join(keys): name for name, keys, _ in _env_overrides(env)}
        raise ConfigError(source, [_format_error(e, env_keys, data) for e in exc.errors()]) from exc
    return config.resolved(base or Path.cwd())


def load_config(path: Path | str | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve the config file at ``path`` (``None``: embedded defaults)."""
    env = os.environ if environ is None else environ
    if path is None:
        return parse_config({}, source="(embedded defaults)", base=Path.cwd(), environ=env)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start}): save it as UTF-8"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}not valid YAML: {problem}"]) from exc
    return parse_config(data, source=str(path), base=path.resolve().parent, environ=env)
