"""dicom_io.reasons: a not-analysed study's short code (its Series Description) and full reason.

The codes are read from the reasons the real modules write (bodypart, pixels, prepare, the
worker), so those are produced here by running them on bad views, not copied: a change of
wording that loses a code fails here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_io.bodypart import SelectionRules, select_view
from dicom_io.outputs import render_summary, summary_reason
from tests.fakes import drawn_text
from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import prepare_view
from dicom_io.reasons import (
    NotAnalysed,
    not_analysed_code,
    not_analysed_reason,
    view_code,
)
from dicom_io.sr import TriageReport, ViewScore, build_triage_sr, series_description
from dicom_io.synthetic import StudySpec, make_instance

PREP, OPTS, RULES = Preprocessing(), DecodeOptions(), SelectionRules()
DEMO = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"


def _instance(**attrs: object) -> Dataset:
    ds = make_instance(StudySpec(views=1, rows=64, columns=64), 0)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _prepared_error(tmp_path: Path, ds: Dataset | bytes | None, opts: DecodeOptions = OPTS,
                    rules: SelectionRules = RULES) -> str:
    path = tmp_path / "view.dcm"
    if isinstance(ds, Dataset):
        ds.save_as(path, enforce_file_format=True)
    elif isinstance(ds, bytes):
        path.write_bytes(ds)
    view = prepare_view(path, PREP, opts, rules)
    assert view.tensor is None and view.error, view
    return view.error


def _selected_error(ds: Dataset, rules: SelectionRules = RULES) -> str:
    selection = select_view(ds, rules)
    assert not selection.scored and selection.reason
    return selection.reason


# --------------------------------------------------------------------------
# each view reason the real modules give -> its code
# --------------------------------------------------------------------------


def test_selection_reasons_get_their_codes() -> None:
    not_analysed = SelectionRules(unmapped_body_part="not_analysed")
    bare = _instance()
    for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName"):
        if keyword in bare:
            delattr(bare, keyword)
    cases = [
        (NotAnalysed.MODALITY, _selected_error(_instance(Modality="MR"))),
        (NotAnalysed.MODALITY, _selected_error(_instance(Modality=""))),
        (NotAnalysed.IMAGE_TYPE,
         _selected_error(_instance(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))),
        (NotAnalysed.FOR_PROCESSING,
         _selected_error(_instance(PresentationIntentType="FOR PROCESSING"))),
        (NotAnalysed.BODY_PART, _selected_error(_instance(BodyPartExamined="SKULL"), not_analysed)),
        (NotAnalysed.BODY_PART, _selected_error(bare, not_analysed)),
    ]
    for code, error in cases:
        assert view_code(error) is code, error


def test_pixel_and_file_reasons_get_their_codes(tmp_path: Path) -> None:
    good = _instance()
    whole = (tmp_path / "whole.dcm")
    good.save_as(whole, enforce_file_format=True)
    cases = [
        (NotAnalysed.MULTIFRAME, _prepared_error(tmp_path, _instance(NumberOfFrames=2))),
        (NotAnalysed.TOO_LARGE,
         _prepared_error(tmp_path, _instance(), DecodeOptions(max_pixels=1000))),
        (NotAnalysed.UNSUPPORTED,
         _prepared_error(tmp_path, _instance(PhotometricInterpretation="CMYK"))),
        (NotAnalysed.UNREADABLE, _prepared_error(tmp_path, b"not DICOM at all" * 10)),
        # cut short in its pixels (a header cut short is issue 18 item 6: it said "modality (none)")
        (NotAnalysed.UNREADABLE, _prepared_error(tmp_path, whole.read_bytes()[:-1000])),
        (NotAnalysed.UNREADABLE, _prepared_error(tmp_path, _instance(BitsStored=20))),
    ]
    missing = prepare_view(tmp_path / "missing.dcm", PREP, OPTS, RULES)
    cases.append((NotAnalysed.STORAGE, missing.error))
    for code, error in cases:
        assert view_code(error) is code, error


def test_scoring_failures_get_their_codes(tmp_path: Path) -> None:
    from daemon.config import parse_config
    from daemon.worker import SCORING_FAILURES, build_pool, score_views
    from tests.conftest import write_study
    from tests.fakes import FixedScorer

    assert [view_code(f"{prefix}: RuntimeError") for prefix in SCORING_FAILURES] == [
        NotAnalysed.MODEL_ERROR, NotAnalysed.TIMED_OUT]

    class Broken(FixedScorer):
        def score(self, views):  # type: ignore[no-untyped-def]
            raise RuntimeError("CUDA error")

    config = parse_config({"decoding": {"workers": 1}}, base=tmp_path, environ={})
    files = write_study(tmp_path / "in", views=1, rows=64, columns=64)
    with build_pool(config, Preprocessing()) as pool:
        [outcome] = score_views(Broken(0.5), pool, [(1, "1.2.3", files[0])], heatmap=None)
    assert view_code(outcome.error) is NotAnalysed.MODEL_ERROR, outcome.error


def test_a_reason_naming_the_setting_that_refused_it() -> None:
    assert view_code("the deflated data set inflates to more than 9 bytes "
                     "(limits.max_instance_mb)") is NotAnalysed.TOO_LARGE
    assert view_code("not a readable DICOM file: the deflated data set inflates to more "
                     "than 9 bytes (limits.max_instance_mb)") is NotAnalysed.TOO_LARGE
    assert view_code("2 x 2 x 9 frame(s) = 36 pixels exceeds limits.max_pixels (9)") \
        is NotAnalysed.TOO_LARGE
    assert view_code("something new (limits.max_pixelsX)") is NotAnalysed.UNREADABLE
    assert view_code("") is NotAnalysed.UNREADABLE


# --------------------------------------------------------------------------
# a study's code from its views'
# --------------------------------------------------------------------------


def test_a_study_code_from_its_views() -> None:
    body = "body part not supported: 'SKULL'"
    assert not_analysed_code([]) is NotAnalysed.NO_IMAGES
    assert not_analysed_code([body, body]) is NotAnalysed.BODY_PART
    assert not_analysed_code([body, "modality MR is not scored"]) is NotAnalysed.MIXED
    # a scoring failure is the study's, whatever its other views say
    assert not_analysed_code([body, "inference failed: RuntimeError"]) is NotAnalysed.MODEL_ERROR
    assert not_analysed_code(["scoring timed out: x", body]) is NotAnalysed.TIMED_OUT
    assert not_analysed_code(["scoring timed out: x", "inference failed: y"]) \
        is NotAnalysed.MODEL_ERROR
    assert not_analysed_code([None, None]) is NotAnalysed.MIXED  # views without a reason
    assert not_analysed_reason([body, None, body, "a"]) == f"no view could be scored: a; {body}"
    assert not_analysed_reason([]) == "no views"


#: a view reason for each code, as the modules write them
SAMPLES: dict[NotAnalysed, tuple[str, ...]] = {
    NotAnalysed.NO_IMAGES: (),
    NotAnalysed.MODEL_ERROR: ("inference failed: RuntimeError in torch.nn.modules.module",),
    NotAnalysed.TIMED_OUT: ("scoring timed out: not scored within limits.study_timeout_s (5 s)",),
    NotAnalysed.MODALITY: ("modality MR is not scored (scoring.modalities: CR, DX)",),
    NotAnalysed.IMAGE_TYPE: ("image type LOCALIZER is not scored",),
    NotAnalysed.FOR_PROCESSING: ("for-processing images are not scored",),
    NotAnalysed.BODY_PART: ("body part not supported: 'SKULL'",),
    NotAnalysed.MULTIFRAME: (("multi-frame images (2 frames) are not scored "
                              "(decoding.multiframe: refuse)"),),
    NotAnalysed.TOO_LARGE: (("9000 x 9000 x 1 frame(s) = 81000000 pixels exceeds "
                             "limits.max_pixels (50000000)"),),
    NotAnalysed.UNSUPPORTED: (("photometric interpretation 'CMYK' is not supported "
                               "(supported: MONOCHROME1, MONOCHROME2)"),),
    NotAnalysed.STORAGE: ("cannot read the stored file: No such file or directory",),
    NotAnalysed.UNREADABLE: (("not a readable DICOM file: truncated: the Pixel Data at offset "
                              "1234 needs 8192 bytes, only 100 left"),),
    NotAnalysed.MIXED: ("body part not supported: 'SKULL'", "image type LOCALIZER is not scored"),
}


def _report(errors: tuple[str, ...], notice: str | None = None,
            uids: list[str] | None = None) -> TriageReport:
    uids = uids or [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, len(errors) + 1)]
    return TriageReport(
        probability=None, abnormal=None, priority="ROUTINE", threshold=0.5,
        algorithm_name="radtriage-demo", algorithm_version="1.1",
        views=tuple(ViewScore(uid, None, e) for uid, e in zip(uids, errors)),
        reason=not_analysed_reason(errors), notice=notice)


def test_every_code_is_sampled() -> None:
    assert set(SAMPLES) == set(NotAnalysed)
    for code, errors in SAMPLES.items():
        assert not_analysed_code(errors) is code


@pytest.mark.parametrize("code", list(NotAnalysed), ids=lambda c: c.name)
@pytest.mark.parametrize("notice", [None, DEMO], ids=["plain", "demo"])
def test_every_series_description_fits_an_lo_and_ends_with_its_code(code, notice) -> None:
    report = _report(SAMPLES[code], notice)
    text = series_description(report)
    head = "AI TRIAGE: NOT ANALYSED - " + ("DEMO MODEL - " if notice else "")
    assert text == head + code.value
    assert len(text) <= 64 and not text.endswith((":", "-", " ")), text
    assert text.isascii() and "\\" not in text
    # the summary image's text: the code and the full reason
    assert summary_reason(report) == f"Reason ({code.value}): {report.reason}"


def test_the_longest_reason_is_said_in_full_in_the_sr_and_on_the_summary(monkeypatch) -> None:
    """The Series Description has the code; the SR's Comment and the burned-in header carry the
    whole reason (several views, each failing its own way)."""
    errors = tuple(f"view {n}: the VOI window (Window Center/Width, VOI LUT Function) cannot "
                   f"be applied: window width {n} must be > 0" for n in range(1, 5)) + (
        "body part not supported: 'SKULL'",)
    report = _report(errors, DEMO)
    assert len(report.reason) > 400
    drawn = drawn_text(monkeypatch)
    render_summary(report, [])
    start = next(i for i, t in enumerate(drawn) if t.startswith("Reason (NO SCORABLE VIEW): "))
    text = " ".join(drawn[start:start + 12])
    assert text.startswith(f"Reason (NO SCORABLE VIEW): {report.reason}"), drawn[start:]


def test_the_sr_comment_has_the_full_reason(tmp_path: Path) -> None:
    """And dciodvfy finds nothing new: the longest description, the demo notice."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    from tests.dicom_io.test_sr import assert_dciodvfy_clean, make_cr, study_texts

    study, series = generate_uid(), generate_uid()
    sources = [make_cr(study, series, 1, "PA"), make_cr(study, series, 2, "LL")]
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    errors = SAMPLES[NotAnalysed.UNSUPPORTED] * 2
    report = _report(errors, DEMO, uids)
    sr = build_triage_sr(report, sources, series_instance_uid=generate_uid(),
                         sop_instance_uid=generate_uid(), series_number=9901,
                         device_observer_uid=generate_uid())
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    back = hd.sr.srread(path)
    assert back.SeriesDescription == "AI TRIAGE: NOT ANALYSED - DEMO MODEL - UNSUPPORTED IMAGE"
    assert len(back.SeriesDescription) == 56  # the longest there is
    assert f"NOT ANALYSED: {report.reason}" in study_texts(back)
    assert_dciodvfy_clean(path)


def test_a_report_without_a_reason_gets_its_views(tmp_path: Path) -> None:
    report = dataclasses.replace(_report(SAMPLES[NotAnalysed.BODY_PART]), reason=None)
    assert summary_reason(report) == ("Reason (BODY PART): no view could be scored: "
                                      "body part not supported: 'SKULL'")
