"""Against a real PACS: Orthanc sends a study to radtriage, radtriage answers with everything.

Orthanc (Debian's package, on free ports) holds a phantom study and sends it to radtriage through
its REST API (``/modalities/{id}/store``); radtriage scores it and sends its SR, summary image, key
object selection and presentation state back to the node that sent it (``return_to_sender``), and
its HL7 messages to an MLLP listener standing in for the RIS. The test then asks Orthanc's REST
API whether the objects sit in the same study with correct references.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import free_port
from tests.dicom_io.test_hl7 import RIS
from tests.integration.conftest import wait_for
from tests.orthanc import orthanc_server  # noqa: F401  (the fixture)
from training.phantoms import generate

pytestmark = pytest.mark.integration

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}
SC = "1.2.840.10008.5.1.4.1.1.7"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def _refs(seq) -> set[str]:  # type: ignore[no-untyped-def]
    """Every Referenced SOP Instance UID under a study/series reference sequence."""
    return {r.ReferencedSOPInstanceUID for st in seq for se in st.ReferencedSeriesSequence
            for r in se.ReferencedSOPSequence}


def test_orthanc_sends_a_study_and_gets_every_object_back_in_it(
        make_daemon, orthanc_server, tmp_path: Path) -> None:  # noqa: F811
    generate(tmp_path / "phantoms", studies=1, seed=44, formats=("dicom",), workers=1)
    files = sorted((tmp_path / "phantoms/dicom").rglob("*.dcm"))
    sources = {}
    for path in files:
        ds = pydicom.dcmread(path)
        sources[ds.SOPInstanceUID] = ds
    study_uid = next(iter(sources.values())).StudyInstanceUID

    ris_port = free_port()
    daemon = make_daemon(
        model={"threshold": 0.01},  # the plumbing model: every study is called abnormal, HIGH
        priority={"rules": [{"min_probability": 0.01, "priority": "HIGH"}]},
        report={"summary": "study", "key_objects": True, "presentation_state": True},
        destinations=[{"name": "sender", "type": "return_to_sender", "port": 1},
                      {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": ris_port}])
    pacs = orthanc_server(modalities={"radtriage": ["RADTRIAGE", "127.0.0.1", daemon.port]})
    # the sender is Orthanc: its DICOM port is where "return to sender" must answer
    daemon.config["destinations"][0]["port"] = pacs.dicom_port
    daemon.start()
    for path in files:
        pacs.upload(path)
    [orthanc_study] = pacs.rest("/studies")
    with RIS(ris_port) as ris:
        pacs.post("/modalities/radtriage/store", json={"Resources": [orthanc_study], "Synchronous": True})
        expected = len(files) + 4  # + SR, summary, KOS, GSPS
        wait_for(lambda: len(pacs.rest(f"/studies/{orthanc_study}/instances")) >= expected, 180,
                 f"{expected} instances in the study at Orthanc:\n{daemon.output()}")
        wait_for(lambda: len(ris.received) >= 2, 60, "the ORM and the ORU at the RIS")
    assert daemon.stop() == 0, daemon.output()

    assert pacs.rest("/studies") == [orthanc_study]  # nothing landed in another study
    back = {}
    for inst in pacs.rest(f"/studies/{orthanc_study}/instances"):
        ds = pydicom.dcmread(__import__("io").BytesIO(
            pacs.session.get(f"{pacs.http_url}/instances/{inst['ID']}/file").content))
        assert ds.StudyInstanceUID == study_uid
        if ds.SOPInstanceUID not in sources:
            back[ds.SOPClassUID] = ds
    assert set(back) == {next(iter(SR_CLASSES & set(back))), SC, KOS, GSPS}
    sr = back[next(iter(SR_CLASSES & set(back)))]
    assert _refs(sr.CurrentRequestedProcedureEvidenceSequence) == set(sources)
    sc = back[SC]
    assert sc.BurnedInAnnotation == "YES" and sc.SeriesInstanceUID != sr.SeriesInstanceUID
    kos = back[KOS]
    kos_refs = _refs(kos.CurrentRequestedProcedureEvidenceSequence)
    assert sr.SOPInstanceUID in kos_refs and kos_refs - {sr.SOPInstanceUID} <= set(sources)
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"
    gsps = back[GSPS]
    gsps_refs = {r.ReferencedSOPInstanceUID for se in gsps.ReferencedSeriesSequence
                 for r in se.ReferencedImageSequence}
    assert gsps_refs <= set(sources) and gsps_refs
    assert len({ds.SeriesInstanceUID for ds in back.values()}) == 4  # each its own series

    kinds = sorted(m.split("\r")[0].split("|")[8][:7] for m in ris.received)
    assert kinds == ["ORM^O01", "ORU^R01"]
    accession = next(iter(sources.values())).AccessionNumber
    assert all(accession in m for m in ris.received)
    assert any(study_uid in m for m in ris.received if m.split("|")[8].startswith("ORM"))
