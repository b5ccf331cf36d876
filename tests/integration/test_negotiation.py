"""What association negotiation refuses, and that it says so (issue 18 items 5 and 7).

* The called AE title: radtriage must be called by ``node.ae_title`` (``node.require_called_ae``,
  default true); another is rejected with "called AE title not recognised", logged once.
* A SOP class radtriage does not take (MR, CT, ...), or one proposed only in transfer syntaxes
  it cannot decode, is refused at negotiation: the sender sees "no presentation context", and
  radtriage logs one line per association naming the classes and the calling AE, and counts
  them in ``radtriage_contexts_refused``.

Senders: pynetdicom in-process and DCMTK's storescu; the receiver runs in-process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    MRImageStorage,
    Verification,
)
from sqlalchemy import func, select

from daemon import metrics
from daemon.receiver import RefusedContext, refusal_text, refused_contexts
from db import Database, Instance
from dicom_io.synthetic import StudySpec, make_instance
from tests.conftest import write_study
from tests.integration.conftest import storescu, wait_for

pytestmark = pytest.mark.integration

MPEG2 = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level: not decodable here
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return write_study(tmp_path / "in", views=2, rows=64, columns=64)


def _associate(port: int, *, calling: str = "PACS", called: str = "RADTRIAGE",
               contexts: list | None = None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.requested_contexts = contexts or [build_context(ComputedRadiographyImageStorage)]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called)


def _stored(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)))


def _refused(sop_class: str, reason: str) -> float:
    return metrics.CONTEXTS_REFUSED.labels(sop_class, reason)._value.get()


def _other_modality(path: Path, sop_class: str, modality: str) -> Path:
    ds = make_instance(StudySpec(views=1, rows=32, columns=32, modality=modality), 0)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.save_as(path, enforce_file_format=True)
    return path


def _lines(caplog, *words: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [m for m in caplog.messages if all(w in m for w in words)]


def _records(caplog, *words: str) -> list[logging.LogRecord]:  # type: ignore[no-untyped-def]
    return [r for r in caplog.records if all(w in r.getMessage() for w in words)]


# -- pure: which contexts count as refused, and the one line that says so ---------------------


def _cx(context_id: int, sop_class: str, result: int, *syntaxes: str) -> SimpleNamespace:
    """A negotiated context as pynetdicom keeps it (what refused_contexts reads of it); any
    abstract syntax, as a wire may carry it."""
    return SimpleNamespace(context_id=context_id, abstract_syntax=sop_class, result=result,
                           transfer_syntax=list(syntaxes) or [EXPLICIT])


def test_refused_contexts_name_known_classes_and_bound_the_labels() -> None:
    requested = [_cx(1, ComputedRadiographyImageStorage, 0), _cx(3, MRImageStorage, 3),
                 _cx(5, MRImageStorage, 3, "1.2.840.10008.1.2"), _cx(7, "1.2.3.4\n5", 3),
                 _cx(9, CTImageStorage, 4, MPEG2, "1.2.840.10008.1.2.4.101", "9.9\x00")]
    accepted, rejected = requested[:1], requested[1:]
    refused = refused_contexts(rejected, accepted, requested)  # type: ignore[arg-type]
    assert refused == [
        RefusedContext("MR Image Storage", "MR Image Storage", "sop_class", "SOP class not accepted"),
        RefusedContext("other", "'1.2.3.4\\n5'", "sop_class", "SOP class not accepted"),
        RefusedContext("CT Image Storage", "CT Image Storage", "transfer_syntax",
                       "no transfer syntax radtriage can decode: MPEG2 Main Profile / Main "
                       "Level, MPEG2 Main Profile / High Level, '9.9\\x00'"),
    ]
    assert refusal_text(refused) == (
        "MR Image Storage, '1.2.3.4\\n5' (SOP class not accepted); CT Image Storage (no "
        "transfer syntax radtriage can decode: MPEG2 Main Profile / Main Level, MPEG2 Main "
        "Profile / High Level, '9.9\\x00')")
    # a class accepted in another context of the association is not refused
    both = [_cx(1, ComputedRadiographyImageStorage, 0),
            _cx(3, ComputedRadiographyImageStorage, 4, MPEG2)]
    assert refused_contexts(both[1:], both[:1], both) == []  # type: ignore[arg-type]
    # every known class is named; UIDs from the wire pydicom does not know are bounded
    many = [RefusedContext("other", f"'1.2.{n}'", "sop_class", "SOP class not accepted")
            for n in range(20)]
    many.append(RefusedContext("MR Image Storage", "MR Image Storage", "sop_class",
                               "SOP class not accepted"))
    assert refusal_text(many) == ("MR Image Storage, " + ", ".join(f"'1.2.{n}'" for n in range(8))
                                  + " and 12 other UID(s) (SOP class not accepted)")


# -- item 7: the called AE title ---------------------------------------------------------------


def test_another_called_ae_is_rejected_and_logged_once(receivers, study, caplog) -> None:
    r, db = receivers()
    with caplog.at_level(logging.WARNING, logger="daemon.receiver"):
        assoc = _associate(r.port, called="ELSEWHERE")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        # permanent, service user, called AE title not recognised (PS3.8 Table 9-21)
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
        wait_for(lambda: _lines(caplog, "ELSEWHERE"), 10, "the rejection to be logged")
        assoc = _associate(r.port, called="RADTRIAGE")  # the right one gets in
        assert assoc.is_established
        assert int(assoc.send_c_store(pydicom.dcmread(study[0])).Status) == 0
        assoc.release()
    [line] = _lines(caplog, "ELSEWHERE")
    assert line.startswith("rejected association from 'PACS' at 127.0.0.1:")
    assert "called AE title 'ELSEWHERE' is not node.ae_title (RADTRIAGE" in line
    assert _stored(db) == 1


def test_storescu_calling_another_ae_is_rejected(receivers, study) -> None:
    r, db = receivers()
    wrong = storescu(r.port, study, aec="ELSEWHERE", check=False)
    output = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in output, output
    assert _stored(db) == 0
    storescu(r.port, study, aec="RADTRIAGE")
    assert _stored(db) == 2


def test_require_called_ae_false_accepts_any_called_ae(receivers, study) -> None:
    r, db = receivers(node={"require_called_ae": False})
    assoc = _associate(r.port, called="ELSEWHERE")
    assert assoc.is_established
    assert int(assoc.send_c_store(pydicom.dcmread(study[0])).Status) == 0
    assoc.release()
    storescu(r.port, study[1:], aec="ANY-SCP")
    assert _stored(db) == 2


def test_a_wrong_called_ae_and_a_wrong_calling_ae_say_both(receivers, caplog) -> None:
    r, _ = receivers(node={"allowed_calling_aes": ["PACS"]})
    with caplog.at_level(logging.WARNING, logger="daemon.receiver"):
        assert _associate(r.port, calling="INTRUDER", called="ELSEWHERE").is_rejected
        [line] = wait_for(lambda: _lines(caplog, "'INTRUDER'"), 10, "the rejection logged")
    assert "'ELSEWHERE'" in line and "not in node.allowed_calling_aes" in line


# -- item 5: refused SOP classes ---------------------------------------------------------------


def test_a_refused_sop_class_is_logged_once_per_association_and_counted(receivers, study,
                                                                        caplog) -> None:
    r, db = receivers()
    mr_before = _refused("MR Image Storage", "sop_class")
    other_before = _refused("other", "sop_class")
    contexts = [build_context(ComputedRadiographyImageStorage), build_context(MRImageStorage),
                build_context(MRImageStorage, ["1.2.840.10008.1.2"]),
                build_context("1.2.826.0.1.3680043.8.498.999"), build_context(Verification)]
    with caplog.at_level(logging.INFO, logger="daemon.receiver"):
        assoc = _associate(r.port, calling="MODALITY", contexts=contexts)
        assert assoc.is_established
        assert {str(cx.abstract_syntax) for cx in assoc.rejected_contexts} == {
            MRImageStorage, "1.2.826.0.1.3680043.8.498.999"}
        assert int(assoc.send_c_store(pydicom.dcmread(study[0])).Status) == 0  # CR goes on
        assoc.release()
        [line] = wait_for(lambda: _lines(caplog, "refused presentation context"), 10,
                          "the refusal to be logged")
    assert line.startswith("refused presentation context(s) proposed by 'MODALITY' at 127.0.0.1:")
    assert line.endswith(": MR Image Storage, '1.2.826.0.1.3680043.8.498.999' "
                         "(SOP class not accepted)"), line
    # once per association and class, though MR was proposed in two contexts
    assert _refused("MR Image Storage", "sop_class") == mr_before + 1
    assert _refused("other", "sop_class") == other_before + 1
    assert _stored(db) == 1
    # INFO: radiographs could be sent in it; a WARNING when none can
    assert _records(caplog, "refused presentation context")[0].levelno == logging.INFO
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="daemon.receiver"):
        # nothing accepted: pynetdicom's requestor aborts at once
        assoc = _associate(r.port, calling="MODALITY", contexts=[build_context(MRImageStorage)])
        assert not assoc.is_established
        [record] = wait_for(lambda: _records(caplog, "refused presentation context"), 10,
                            "the refusal to be logged")
    assert record.levelno == logging.WARNING
    assert record.getMessage().endswith(": MR Image Storage (SOP class not accepted)")
    assert _refused("MR Image Storage", "sop_class") == mr_before + 2


def test_storescu_sending_mr_and_ct_leaves_a_trace(receivers, study, tmp_path, caplog) -> None:
    r, db = receivers()
    mr = _other_modality(tmp_path / "mr.dcm", MRImageStorage, "MR")
    ct = _other_modality(tmp_path / "ct.dcm", CTImageStorage, "CT")
    before = {c: _refused(c, "sop_class") for c in ("MR Image Storage", "CT Image Storage")}
    with caplog.at_level(logging.INFO, logger="daemon.receiver"):
        sent = storescu(r.port, [*study, mr, ct], aet="STORESCU", check=False)
        [line] = wait_for(lambda: _lines(caplog, "refused presentation context"), 10,
                          "the refusal to be logged")
    output = sent.stdout + sent.stderr
    assert "No presentation context" in output, output
    assert "proposed by 'STORESCU' at 127.0.0.1:" in line
    assert "MR Image Storage" in line and "CT Image Storage" in line, line
    assert {c: _refused(c, "sop_class") for c in before} == {c: n + 1 for c, n in before.items()}
    assert _stored(db) == 2  # the radiographs of the same association were stored


def test_a_class_proposed_only_in_syntaxes_it_cannot_decode(receivers, caplog) -> None:
    r, _ = receivers()
    before = _refused("Computed Radiography Image Storage", "transfer_syntax")
    with caplog.at_level(logging.WARNING, logger="daemon.receiver"):
        # the same class also in a syntax it decodes: accepted, nothing to say
        assoc = _associate(r.port, contexts=[build_context(ComputedRadiographyImageStorage, [MPEG2]),
                                             build_context(ComputedRadiographyImageStorage)])
        assert assoc.is_established
        assoc.release()
        assoc = _associate(r.port, contexts=[build_context(ComputedRadiographyImageStorage, [MPEG2]),
                                             build_context(Verification)])
        assert assoc.is_established
        assoc.release()
        [line] = wait_for(lambda: _lines(caplog, "refused presentation context"), 10,
                          "the refusal to be logged")
    assert line.endswith("Computed Radiography Image Storage (no transfer syntax radtriage can "
                         "decode: MPEG2 Main Profile / Main Level)"), line
    assert _refused("Computed Radiography Image Storage", "transfer_syntax") == before + 1
