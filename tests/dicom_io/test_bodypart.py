"""Tests for dicom_io.bodypart: what gets scored and which MURA study type a radiograph is."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicom_io.bodypart import (
    DEFAULT_BODY_PARTS,
    DEFAULT_IGNORED_WORDS,
    MURA_STUDY_TYPES,
    NOT_UPPER_LIMB,
    SelectionRules,
    ViewSelection,
    normalise,
    select_view,
    study_type_from_text,
    study_type_of,
    study_type_of_study,
)


def make_ds(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def from_text(text: str | None) -> str | None:
    return study_type_from_text(text, DEFAULT_BODY_PARTS, DEFAULT_IGNORED_WORDS)


# --------------------------------------------------------------------------
# normalise


@pytest.mark.parametrize(("text", "tokens"), [
    ("Épaule gauche", ["EPAULE", "GAUCHE"]),
    ("MUÑECA DCHA", ["MUNECA", "DCHA"]),
    ("Avant-bras_D", ["AVANT", "BRAS", "D"]),
    ("XR WRIST 3+ VIEWS", ["XR", "WRIST", "3", "VIEWS"]),
    ("  ", []),
    ("Mão", ["MAO"]),
    ("Schräg", ["SCHRAG"]),
])
def test_normalise(text: str, tokens: list[str]) -> None:
    assert normalise(text) == tokens


# --------------------------------------------------------------------------
# the tables themselves


def test_default_table_covers_every_study_type_and_nothing_else() -> None:
    assert tuple(DEFAULT_BODY_PARTS) == MURA_STUDY_TYPES


def test_default_phrases_are_normalised_and_unique() -> None:
    seen: dict[tuple[str, ...], str] = {}
    for study_type, words in DEFAULT_BODY_PARTS.items():
        for word in words:
            phrase = tuple(normalise(word))
            assert " ".join(phrase) == word, word
            assert seen.setdefault(phrase, study_type) == study_type, word


def test_no_ignored_word_is_part_of_a_body_part_phrase() -> None:
    ignored = {token for word in DEFAULT_IGNORED_WORDS for token in normalise(word)}
    body = {token for words in DEFAULT_BODY_PARTS.values() for w in words for token in normalise(w)}
    body |= {token for phrase in NOT_UPPER_LIMB for token in normalise(phrase)}
    assert not ignored & body


def test_every_default_phrase_maps_to_its_own_type() -> None:
    for study_type, words in DEFAULT_BODY_PARTS.items():
        for word in words:
            assert from_text(word) == study_type, word


# --------------------------------------------------------------------------
# Body Part Examined defined terms, synonyms, abbreviations


@pytest.mark.parametrize(("body_part", "study_type"), [
    ("ELBOW", "ELBOW"),
    ("FINGER", "FINGER"),
    ("THUMB", "FINGER"),
    ("FOREARM", "FOREARM"),
    ("HAND", "HAND"),
    ("HUMERUS", "HUMERUS"),
    ("SHOULDER", "SHOULDER"),
    ("WRIST", "WRIST"),
])
def test_body_part_examined_defined_terms(body_part: str, study_type: str) -> None:
    assert study_type_of(make_ds(BodyPartExamined=body_part)) == study_type


@pytest.mark.parametrize(("text", "study_type"), [
    ("WRST", "WRIST"),
    ("R_WRIST", "WRIST"),
    ("XR ELB 2V", "ELBOW"),
    ("SHLDR AP/Y", "SHOULDER"),
    ("HUM LT", "HUMERUS"),
    ("FNGR 3", "FINGER"),
    ("FING", "FINGER"),
    ("Upper arm", "HUMERUS"),
    ("UPPER_ARM", "HUMERUS"),
    ("upper left arm", "HUMERUS"),
    ("Lower arm", "FOREARM"),
    ("Radius/Ulna", "FOREARM"),
    ("Scaphoid series", "WRIST"),
    ("SHOULDERS", "SHOULDER"),
    ("Both hands PA", "HAND"),
    ("Thumbs", "FINGER"),
])
def test_synonyms_and_abbreviations(text: str, study_type: str) -> None:
    assert from_text(text) == study_type


# --------------------------------------------------------------------------
# languages, accents, laterality


@pytest.mark.parametrize(("text", "study_type"), [
    # de
    ("Handgelenk links", "WRIST"),
    ("Ellenbogen rechts", "ELBOW"),
    ("Schulter re.", "SHOULDER"),
    ("Unterarm li", "FOREARM"),
    ("Oberarm bds.", "HUMERUS"),
    ("Daumen links", "FINGER"),
    ("Hand links", "HAND"),
    # fr
    ("Poignet droit", "WRIST"),
    ("Coude gauche", "ELBOW"),
    ("Épaule G", "SHOULDER"),
    ("Avant-bras droit", "FOREARM"),
    ("Humérus gauche", "HUMERUS"),
    ("Pouce D", "FINGER"),
    ("Doigt gauche", "FINGER"),
    ("Main droite", "HAND"),
    # es
    ("MUÑECA IZQUIERDA", "WRIST"),
    ("MUÑECA DCHA", "WRIST"),
    ("Codo derecho", "ELBOW"),
    ("Hombro izq", "SHOULDER"),
    ("Antebrazo derecho", "FOREARM"),
    ("Húmero izquierdo", "HUMERUS"),
    ("Pulgar derecho", "FINGER"),
    ("Dedo izquierdo", "FINGER"),
    ("Mano derecha", "HAND"),
    # it
    ("Polso destro", "WRIST"),
    ("Gomito sinistro", "ELBOW"),
    ("Spalla dx", "SHOULDER"),
    ("Avambraccio sinistro", "FOREARM"),
    ("Omero destro", "HUMERUS"),
    ("Pollice sx", "FINGER"),
    ("Dito destro", "FINGER"),
    ("Mano sinistra", "HAND"),
    # nl
    ("Pols links", "WRIST"),
    ("Elleboog rechts", "ELBOW"),
    ("Schouder links", "SHOULDER"),
    ("Onderarm rechts", "FOREARM"),
    ("Bovenarm links", "HUMERUS"),
    ("Duim rechts", "FINGER"),
    ("Vinger links", "FINGER"),
    ("Hand rechts", "HAND"),
    # pt
    ("Punho esquerdo", "WRIST"),
    ("Cotovelo direito", "ELBOW"),
    ("Ombro esquerdo", "SHOULDER"),
    ("Antebraço direito", "FOREARM"),
    ("Úmero esquerdo", "HUMERUS"),
    ("Polegar direito", "FINGER"),
    ("Mão esquerda", "HAND"),
])
def test_languages_with_accents_and_laterality(text: str, study_type: str) -> None:
    assert from_text(text) == study_type


# --------------------------------------------------------------------------
# token boundaries, longest phrase, two types in one text


@pytest.mark.parametrize(("text", "study_type"), [
    ("HANDGELENK", "WRIST"),             # not HAND
    ("Handgelenk und Hand", "WRIST"),    # the first named
    ("SHOULDER", "SHOULDER"),            # never HAND inside it
    ("HANDLE", None),                    # a word that merely starts with HAND
    ("WRISTWATCH", None),
    ("ARM", None),                       # ambiguous alone
    ("Bras gauche", None),
    ("Brazo derecho", None),
    ("UPPER ARM", "HUMERUS"),            # the longer phrase wins
    ("AVANT BRAS", "FOREARM"),
    ("Avant bras et main", "FOREARM"),
    ("Dedo del pie izquierdo", None),    # a toe, not a finger
    ("Dedo do pé", None),
    ("Dito del piede destro", None),
    ("Dedo gordo", None),
])
def test_boundaries_and_phrases(text: str, study_type: str | None) -> None:
    assert from_text(text) == study_type


@pytest.mark.parametrize(("text", "study_type"), [
    ("HAND AND WRIST", "HAND"),
    ("Wrist / hand", "WRIST"),
    ("Doigt de la main", "FINGER"),
    ("Dedo de la mano", "FINGER"),
    ("Shoulder and humerus", "SHOULDER"),
])
def test_the_first_named_type_wins(text: str, study_type: str) -> None:
    assert from_text(text) == study_type


@pytest.mark.parametrize("text", [None, "", "   ", "KNEE", "CHEST", "XR LEFT AP", "FOOT", "ANKLE", "PELVIS"])
def test_unmapped_text(text: str | None) -> None:
    assert from_text(text) is None


# --------------------------------------------------------------------------
# fields


def test_body_part_examined_beats_the_descriptions() -> None:
    ds = make_ds(BodyPartExamined="WRIST", ProtocolName="Hand PA", SeriesDescription="Elbow",
                 StudyDescription="XR HAND AND WRIST")
    assert study_type_of(ds) == "WRIST"


@pytest.mark.parametrize(("attributes", "study_type"), [
    ({"ProtocolName": "Elbow 2 views", "SeriesDescription": "Hand", "StudyDescription": "Shoulder"}, "ELBOW"),
    ({"SeriesDescription": "Hand", "StudyDescription": "Shoulder"}, "HAND"),
    ({"StudyDescription": "Shoulder"}, "SHOULDER"),
    # Body Part Examined names another region: the descriptions are not asked
    ({"BodyPartExamined": "KNEE", "StudyDescription": "Épaule droite"}, None),
    ({"BodyPartExamined": "FOOT", "StudyDescription": "Hand/foot survey"}, None),
    ({"BodyPartExamined": "", "ProtocolName": "Finger"}, "FINGER"),
])
def test_the_first_field_that_names_a_type_decides(attributes: dict[str, str], study_type: str) -> None:
    assert study_type_of(make_ds(**attributes)) == study_type


@pytest.mark.parametrize("attributes", [
    {},
    {"BodyPartExamined": "KNEE"},
    {"BodyPartExamined": "CHEST", "StudyDescription": "Thorax PA"},
    {"BodyPartExamined": "", "StudyDescription": ""},
    {"BodyPartExamined": None},
])
def test_unmapped_datasets(attributes: dict[str, str]) -> None:
    assert study_type_of(make_ds(**attributes)) is None


# --------------------------------------------------------------------------
# admin tables


def test_admin_table_replaces_the_defaults() -> None:
    table = {"WRIST": ["carpus"]}
    assert study_type_from_text("Carpus links", table, DEFAULT_IGNORED_WORDS) == "WRIST"
    assert study_type_from_text("HAND", table, DEFAULT_IGNORED_WORDS) is None
    assert study_type_of(make_ds(BodyPartExamined="CARPUS"), table) == "WRIST"


def test_admin_table_is_normalised() -> None:
    table = {"shoulder": ["Épaule", "ac-joint"], "HUMERUS": ["haut du bras"]}
    assert study_type_from_text("EPAULE", table, []) == "SHOULDER"
    assert study_type_from_text("AC joint left", table, ["left"]) == "SHOULDER"
    assert study_type_from_text("Haut du bras gauche", table, ["gauche"]) == "HUMERUS"


def test_admin_ignored_words_let_phrases_match_across_them() -> None:
    table = {"HUMERUS": ["upper arm"]}
    assert study_type_from_text("upper left arm", table, []) is None
    assert study_type_from_text("upper left arm", table, ["left"]) == "HUMERUS"
    assert study_type_from_text("upper x-ray arm", table, ["X-Ray"]) == "HUMERUS"


def test_admin_can_override_a_not_upper_limb_phrase() -> None:
    table = {"FINGER": ["dedo", "dedo del pie"]}
    assert study_type_from_text("Dedo del pie", table, []) == "FINGER"


@pytest.mark.parametrize(("table", "message"), [
    ({"KNEE": ["knee"]}, "unknown study type"),
    ({"HAND": ["hand"], "WRIST": ["Hand"]}, "listed under both"),
    ({"HAND": ["--"]}, "no letters or digits"),
])
def test_bad_admin_tables_are_refused(table: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectionRules(body_parts=table)


def test_a_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(TypeError):
        study_type_from_text("HAND", {"HAND": "hand"}, [])  # type: ignore[dict-item]


# --------------------------------------------------------------------------
# select_view


def radiograph(**attributes: object) -> Dataset:
    values: dict[str, object] = {"Modality": "DX", "ImageType": ["ORIGINAL", "PRIMARY"],
                                 "BodyPartExamined": "WRIST"}
    values.update(attributes)
    return make_ds(**{k: v for k, v in values.items() if v is not None})


def test_a_wrist_radiograph_is_scored() -> None:
    assert select_view(radiograph()) == ViewSelection(scored=True, study_type="WRIST", reason=None)
    assert select_view(radiograph(Modality="CR")).scored


def test_other_modalities_are_not_scored() -> None:
    selection = select_view(radiograph(Modality="MR", BodyPartExamined="SHOULDER"))
    assert not selection.scored
    assert selection.study_type == "SHOULDER"
    assert selection.reason == "modality MR is not scored (scoring.modalities: CR, DX)"


def test_a_missing_modality_is_not_scored() -> None:
    selection = select_view(radiograph(Modality=None))
    assert not selection.scored and selection.reason is not None
    assert selection.reason.startswith("modality (none) is not scored")


def test_configured_modalities() -> None:
    rules = SelectionRules(modalities=("CR", "DX", "RF"))
    assert select_view(radiograph(Modality="RF"), rules).scored
    assert not select_view(radiograph(Modality="MG"), rules).scored


def test_localizers_are_not_scored() -> None:
    selection = select_view(radiograph(ImageType=["DERIVED", "PRIMARY", "LOCALIZER"]))
    assert selection == ViewSelection(False, "WRIST", "image type LOCALIZER is not scored")
    assert select_view(radiograph(ImageType="ORIGINAL")).scored


def test_for_processing_images() -> None:
    ds = radiograph(PresentationIntentType="FOR PROCESSING")
    selection = select_view(ds)
    assert not selection.scored
    assert selection.reason == "for-processing images are not scored"
    assert select_view(ds, SelectionRules(score_for_processing=True)).scored
    assert select_view(radiograph(PresentationIntentType="FOR PRESENTATION")).scored


def test_unmapped_body_part_is_scored_without_a_type_by_default() -> None:
    assert select_view(radiograph(BodyPartExamined="KNEE")) == ViewSelection(True, None, None)


def test_unmapped_body_part_can_be_reported_not_analysed() -> None:
    rules = SelectionRules(unmapped_body_part="not_analysed")
    selection = select_view(radiograph(BodyPartExamined="KNEE", StudyDescription="Knee 2 views"), rules)
    assert selection == ViewSelection(False, None, "body part not supported: 'KNEE'")
    assert select_view(radiograph(), rules).scored


def test_not_analysed_reason_quotes_body_part_examined_truncated_and_never_a_description() -> None:
    rules = SelectionRules(unmapped_body_part="not_analysed")
    ds = radiograph(BodyPartExamined=None)
    # an over-long CS, as some modalities write: build it without pydicom's validation
    ds.add(DataElement("BodyPartExamined", "CS", "KNEE " * 30, validation_mode=pydicom.config.IGNORE))
    selection = select_view(ds, rules)
    assert selection.reason is not None
    assert selection.reason.startswith("body part not supported: 'KNEE KNEE")
    assert selection.reason.endswith("...'")
    assert len(selection.reason) < len("body part not supported: ''") + 66
    # free text may carry patient data: it is never quoted
    described = radiograph(BodyPartExamined=None, StudyDescription="Knee - ref. Dr Smith, pt J. DOE")
    reason = select_view(described, rules).reason
    assert reason == ("body part not supported: no Body Part Examined, and the descriptions name "
                      "no supported body part")
    nothing = select_view(radiograph(BodyPartExamined=None), rules)
    assert nothing.reason == "body part not supported: no body part or description"


def test_bad_unmapped_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unmapped_body_part"):
        SelectionRules(unmapped_body_part="skip")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# study_type_of_study


@pytest.mark.parametrize(("types", "study_type"), [
    ([], None),
    ([None, None], None),
    (["WRIST"], "WRIST"),
    (["WRIST", None, "WRIST", "HAND"], "WRIST"),
    (["WRIST", "HAND"], "HAND"),               # tie: MURA order
    (["SHOULDER", "HUMERUS", None], "HUMERUS"),
    (["FINGER", "ELBOW", "FINGER", "ELBOW"], "ELBOW"),
])
def test_study_type_of_study(types: list[str | None], study_type: str | None) -> None:
    assert study_type_of_study(types) == study_type
    assert study_type_of_study(iter(types)) == study_type
