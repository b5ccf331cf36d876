"""Small synthetic radiograph instances for tests, benchmarks and demos.

These are plumbing objects (a smooth background with a bright bar where a bone would be), not
the realistic phantoms of ``training/``. Every UID is generated with pydicom's radtriage-free
UID root; no patient data is real.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1.1"


#: Anatomic Region codes (SNOMED CT) for the body parts the synthetic studies use
_REGIONS = {
    "WRIST": ("74670003", "SCT", "Wrist joint"),
    "HAND": ("85562004", "SCT", "Hand"),
    "ELBOW": ("16953009", "SCT", "Elbow joint"),
    "FINGER": ("7569003", "SCT", "Finger"),
    "FOREARM": ("14975008", "SCT", "Forearm"),
    "HUMERUS": ("85050009", "SCT", "Humerus"),
    "SHOULDER": ("16982005", "SCT", "Shoulder region"),
}


@dataclass
class StudySpec:
    """What a synthetic study looks like; UIDs are made once per spec."""

    views: int = 3
    rows: int = 256
    columns: int = 256
    bits_stored: int = 12
    modality: str = "CR"
    photometric: str = "MONOCHROME2"
    body_part: str = "WRIST"
    patient_name: str = "PHANTOM^TEST"
    patient_id: str = "PHANTOM-0001"
    accession_number: str = "ACC0001"
    seed: int = 0
    study_instance_uid: str = field(default_factory=generate_uid)
    series_instance_uid: str = field(default_factory=generate_uid)


def _pixels(spec: StudySpec, view: int) -> np.ndarray:
    rng = np.random.default_rng(spec.seed * 1000 + view)
    maxval = (1 << spec.bits_stored) - 1
    y, x = np.mgrid[0:spec.rows, 0:spec.columns].astype(np.float32)
    img = 0.15 + 0.1 * (x / spec.columns)  # soft-tissue gradient
    cx = spec.columns * (0.4 + 0.2 * rng.random())
    width = spec.columns * 0.12
    img = img + 0.6 * np.exp(-(((x - cx) / width) ** 2)) * (y > spec.rows * 0.1)
    img = img + rng.normal(0, 0.02, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    if spec.photometric == "MONOCHROME1":
        img = 1.0 - img
    return (img * maxval).astype(np.uint16)


def make_instance(spec: StudySpec, view: int) -> Dataset:
    """Return view number ``view`` (0-based) of ``spec``'s study, with file meta, uncompressed."""
    if spec.modality == "CR":
        sop_class = CR_IMAGE_STORAGE
    else:
        sop_class = DX_PRESENTATION_STORAGE
    sop_uid = generate_uid()
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = spec.accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = f"XR {spec.body_part}"
    ds.SeriesDescription = f"{spec.body_part} views"
    ds.Modality = spec.modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = view + 1
    ds.Manufacturer = "radtriage synthetic"
    ds.BodyPartExamined = spec.body_part
    ds.ViewPosition = ("AP", "LL", "PA", "OBL")[view % 4] if spec.modality == "DX" else ""
    ds.PatientOrientation = ["A", "F"] if spec.modality == "DX" else ""
    if spec.modality == "CR":
        ds.Laterality = ""
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = _REGIONS.get(
        spec.body_part, ("38266002", "SCT", "Entire body")
    )
    ds.AnatomicRegionSequence = [region]
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if spec.modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.ImagerPixelSpacing = [0.1, 0.1]
        ds.PixelSpacing = [0.1, 0.1]
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.ImageLaterality = "U"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = []
        ds.PresentationLUTShape = "INVERSE" if spec.photometric == "MONOCHROME1" else "IDENTITY"
    pixels = _pixels(spec, view)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    maxval = (1 << spec.bits_stored) - 1
    ds.WindowCenter = maxval // 2
    ds.WindowWidth = maxval
    ds.PixelData = pixels.tobytes()
    return ds


def make_study(spec: StudySpec) -> list[Dataset]:
    return [make_instance(spec, v) for v in range(spec.views)]
