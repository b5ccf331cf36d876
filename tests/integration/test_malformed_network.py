"""Bad input over the network: the real Storage SCP in-process on a free port, a pynetdicom SCU
sending each malformed data set exactly as it is (no pydicom re-encoding).

pynetdicom sends a file path's data set raw when ``_config.STORE_SEND_CHUNKED_DATASET`` is set
(it reads the File Meta group for the request's UIDs and transfer syntax, then streams the rest
of the file as it is), so each entry is written as the File Meta group of its request followed
by its broken data set bytes.

For every entry of tests/dicom_io/malformed.py: a failure status within the DIMSE timeout, the
file in ``storage/quarantine`` with a note naming the problem, no instance row, and a valid
instance sent on the next association stored with Success. Then a hypothesis fuzzer mutates
valid data sets (flip, insert and delete bytes, overwrite length fields, truncate) over one
long-lived association: every C-STORE is answered; Success means stored, in the database and
readable; anything else is a refusal that was quarantined, with no instance row.
"""

from __future__ import annotations

import struct
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from sqlalchemy import func, select

from daemon.receiver import QUARANTINE_DIR, Receiver
from db import Database, Instance
from dicom_io.synthetic import CR_IMAGE_STORAGE, StudySpec, make_instance
from dicom_io.validate import check_instance
from tests.dicom_io import malformed

pytestmark = [
    pytest.mark.integration,
    # pydicom warns about (and logs) invalid values it reads, then goes on; in the daemon that is
    # no error, under pytest's ``filterwarnings = error`` it would be one in the handler thread
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),
]

#: Seconds within which each C-STORE must be answered (the SCU gives up and aborts after it).
ANSWER_WITHIN_S = 10
REFUSALS = {malformed.CANNOT_UNDERSTAND, malformed.DATA_SET_DOES_NOT_MATCH_SOP_CLASS}


@pytest.fixture
def receiver(receivers, monkeypatch: pytest.MonkeyPatch) -> tuple[Receiver, Database]:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    return receivers(node={"dimse_timeout_s": ANSWER_WITHIN_S})


@contextmanager
def association(port: int) -> Iterator[Association]:
    """An association proposing CR in each transfer syntax of the corpus, one context each,
    so every file goes in its own syntax, unconverted."""
    ae = AE(ae_title="FUZZSCU")
    for ts in malformed.TRANSFER_SYNTAXES:
        ae.add_requested_context(CR_IMAGE_STORAGE, [ts])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_WITHIN_S
    assoc = ae.associate("127.0.0.1", port, ae_title="RADTRIAGE")
    assert assoc.is_established, "the receiver refused the association"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send(assoc: Association, entry: malformed.Malformed, folder: Path) -> int:
    """C-STORE ``entry`` raw; its status, which must come within ANSWER_WITHIN_S."""
    path = entry.write(folder / f"{entry.sop_instance_uid}.dcm")
    start = time.monotonic()
    answer = assoc.send_c_store(path)
    took = time.monotonic() - start
    assert "Status" in answer, f"{entry.name}: no answer after {took:.1f} s (association aborted)"
    assert took < ANSWER_WITHIN_S, f"{entry.name}: answered after {took:.1f} s"
    return int(answer.Status)


def valid_entry() -> malformed.Malformed:
    s = malformed.source()
    return s.entry("valid", s.dataset, malformed.CHECK)


def notes(storage: Path) -> dict[Path, str]:
    folder = storage / QUARANTINE_DIR
    return {p: p.read_text() for p in folder.glob("*.txt")} if folder.is_dir() else {}


def instance_row(db: Database, sop_uid: str) -> Instance | None:
    with db.session() as s:
        row = s.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
        if row is not None:
            s.expunge(row)
        return row


def assert_stored(db: Database, storage: Path, sop_uid: str) -> None:
    row = instance_row(db, sop_uid)
    assert row is not None, f"Success for {sop_uid} but no instance row"
    path = storage / row.path
    assert path.stat().st_size == row.size_bytes
    assert pydicom.dcmread(path).SOPInstanceUID == sop_uid
    check_instance(path)


def assert_quarantined(storage: Path, before: dict[Path, str], entry: malformed.Malformed,
                       check_reason: bool = True) -> str:
    """One new note for ``entry`` naming its problem; the file kept beside it, as received."""
    sop_uid = entry.sop_instance_uid
    new = {p: text for p, text in notes(storage).items() if p not in before}
    assert len(new) == 1, f"expected one new quarantine note for {sop_uid}, found {len(new)}"
    [(note, text)] = new.items()
    assert f"affected SOP instance: {sop_uid}\n" in text, text
    kept = note.with_suffix(".dcm").read_bytes()
    assert kept.endswith(entry.dataset), f"{entry.name}: not kept as received"
    if check_reason:
        for word in entry.words(meta_length=len(kept) - len(entry.dataset)):
            assert word in text, f"{word!r} not in the note: {text!r}"
    return text


NETWORK_CORPUS = [m for m in malformed.build() if m.network]


def test_every_malformed_instance_is_refused_quarantined_and_the_next_association_works(
        receiver, tmp_path):
    rcv, db = receiver
    storage = tmp_path / "storage"
    out = tmp_path / "sent"
    out.mkdir()
    stored = []
    for entry in NETWORK_CORPUS:
        before = notes(storage)
        with association(rcv.port) as assoc:
            status = send(assoc, entry, out)
        assert status == entry.status, f"{entry.name}: 0x{status:04X}, not 0x{entry.status:04X}"
        text = assert_quarantined(storage, before, entry)
        assert "PHANTOM" not in text  # no patient name or ID in the note
        assert instance_row(db, entry.sop_instance_uid) is None, entry.name

        good = valid_entry()  # the next association is served as if nothing had happened
        with association(rcv.port) as assoc:
            assert send(assoc, good, out) == 0, f"valid instance after {entry.name} refused"
        assert_stored(db, storage, good.sop_instance_uid)
        stored.append(good.sop_instance_uid)

    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == len(stored)
    assert len(notes(storage)) == len(NETWORK_CORPUS)
    assert not list((storage / ".tmp").iterdir())


# -- the fuzzer ------------------------------------------------------------------------

#: The SOP Instance UID of the fuzzer's sources; each example gets its own of the same length.
_PLACEHOLDER = "1.2.826.0.1.3680043.8.498.4711.3.100000"


def _base(ts: str) -> bytes:
    """A valid data set in ``ts`` whose bytes do not change between runs (fixed UIDs); for the
    deflated syntax, the data set before deflating (see :func:`prepared`)."""
    if ts == uid.DeflatedExplicitVRLittleEndian:
        ts = uid.ExplicitVRLittleEndian
    spec = StudySpec(views=1, rows=32, columns=32, seed=5,
                     study_instance_uid="1.2.826.0.1.3680043.8.498.4711.1",
                     series_instance_uid="1.2.826.0.1.3680043.8.498.4711.2")
    ds = make_instance(spec, 0)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _PLACEHOLDER
    data = malformed.dataset_of(malformed.part10(ds, ts))
    assert data.count(_PLACEHOLDER.encode()) == 1
    return data


def prepared(ts: str, sop_uid: str) -> bytes:
    """The valid data set of ``ts`` with its own SOP Instance UID, as it goes on the wire."""
    data = BASES[ts].replace(_PLACEHOLDER.encode(), sop_uid.encode())
    if ts == uid.DeflatedExplicitVRLittleEndian:
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = c.compress(data) + c.flush()
    return data


_FUZZED_SYNTAXES = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.RLELossless,
                    uid.JPEG2000Lossless, uid.DeflatedExplicitVRLittleEndian)
BASES = {ts: _base(ts) for ts in _FUZZED_SYNTAXES}


def _length_fields(ts: str, data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each top-level length field (the deflated bytes have none to find)."""
    if ts == uid.DeflatedExplicitVRLittleEndian:
        return [(0, 4)]
    els = malformed.elements(data, implicit=ts == uid.ImplicitVRLittleEndian)
    return [(e.length_at, e.length_size) for e in els.values()]


LENGTH_FIELDS = {ts: _length_fields(ts, data) for ts, data in BASES.items()}
HEADER_END = {ts: min(len(data), 900) for ts, data in BASES.items()}

_offset = st.integers(0, 1 << 16)
_mutation = st.one_of(
    st.tuples(st.just("flip"), _offset, st.integers(1, 255)),
    st.tuples(st.just("insert"), _offset, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _offset, st.integers(1, 16)),
    st.tuples(st.just("length"), st.integers(0, 1000),
              st.sampled_from([0, 1, 2, 3, 0xFF, 0xFFFE, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0,
                               0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("truncate"), _offset, st.just(0)),
)


def mutate(ts: str, data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    """Apply ``mutations`` in order; offsets are taken modulo the header's (most of the time)
    or the whole data set's length, so most land where the structure is."""
    out = bytearray(data)
    for kind, where, arg in mutations:
        if not out:
            break
        limit = HEADER_END[ts] if where % 4 else len(out)
        at = where % min(limit, len(out))
        if kind == "flip":
            out[at] ^= int(arg)  # type: ignore[call-overload]
        elif kind == "insert":
            out[at:at] = arg  # type: ignore[assignment]
        elif kind == "delete":
            del out[at:at + int(arg)]  # type: ignore[call-overload]
        elif kind == "truncate":
            del out[at:]
        else:  # overwrite a length field with a chosen value
            fields = LENGTH_FIELDS[ts]
            offset, size = fields[where % len(fields)]
            value = int(arg) & (0xFFFF if size == 2 else 0xFFFFFFFF)  # type: ignore[call-overload]
            out[offset:offset + size] = struct.pack("<H" if size == 2 else "<L", value)
    return bytes(out)


def test_fuzzed_instances_are_answered_stored_or_quarantined(receiver, tmp_path):
    rcv, db = receiver
    storage = tmp_path / "storage"
    out = tmp_path / "sent"
    out.mkdir()
    counter = iter(range(1, 1_000_000))
    outcomes = {"stored": 0, "refused": 0}

    with association(rcv.port) as assoc:

        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(ts=st.sampled_from(_FUZZED_SYNTAXES),
               mutations=st.lists(_mutation, min_size=1, max_size=3))
        def one(ts: str, mutations: list[tuple[str, int, object]]) -> None:
            sop_uid = f"{_PLACEHOLDER[:-6]}{100000 + next(counter)}"
            data = mutate(ts, prepared(ts, sop_uid), mutations)
            entry = malformed.Malformed("fuzzed", data, ts, CR_IMAGE_STORAGE, sop_uid,
                                        malformed.CHECK, ())
            before = notes(storage)
            assert assoc.is_established, "the receiver dropped the association"
            status = send(assoc, entry, out)
            if status == 0:
                assert_stored(db, storage, sop_uid)
                assert len(notes(storage)) == len(before)
                outcomes["stored"] += 1
            else:
                assert status in REFUSALS, f"0x{status:04X} for {mutations} on {uid.UID(ts).name}"
                assert_quarantined(storage, before, entry, check_reason=False)
                assert instance_row(db, sop_uid) is None
                outcomes["refused"] += 1

        one()

    assert outcomes["refused"] > 0 and outcomes["stored"] > 0, outcomes  # both paths were taken
    good = valid_entry()
    with association(rcv.port) as assoc:
        assert send(assoc, good, out) == 0
    assert_stored(db, storage, good.sop_instance_uid)
    assert not list((storage / ".tmp").iterdir())
