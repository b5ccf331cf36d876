"""What gets scored, and which MURA study type a radiograph is.

The classifier was trained on MURA, whose studies are upper-limb radiographs of seven types
(:data:`MURA_STUDY_TYPES`). :func:`select_view` decides whether one instance is scored at all
(modality, image type, presentation intent, body part) and :func:`study_type_of` maps it to its
study type from the free text a modality writes.

Matching rules (one free-text value, :func:`study_type_from_text`):

1. The text is normalised (:func:`normalise`): upper case, accents stripped (NFKD), split into
   tokens on anything that is not A-Z or 0-9. ``"Épaule gauche"`` -> ``EPAULE GAUCHE``,
   ``"R_WRIST"`` -> ``R WRIST``, ``"Avant-bras"`` -> ``AVANT BRAS``. The configured phrases and
   ignored words go through the same function, so admins may write them in lower case, with
   accents or with hyphens.
2. Ignored words (laterality, views, "X-RAY", ...; :data:`DEFAULT_IGNORED_WORDS`) are removed
   first, so a phrase still matches across them: ``"UPPER LEFT ARM"`` is ``UPPER ARM``.
3. Phrases match whole tokens only, multi-word phrases as consecutive tokens: ``HANDGELENK`` is a
   WRIST and never a HAND, ``SHOULDER`` never contains ``HAND``. Plurals match only where they are
   listed (the defaults list the common ones, e.g. ``SHOULDERS``, ``DEDOS``).
4. The text is read left to right and, at each position, the longest phrase wins over the shorter
   ones it contains (``UPPER ARM`` is HUMERUS although ``ARM`` alone names nothing).
5. When one text names two study types (``"HAND AND WRIST"``, ``"Doigt de la main"``) the first
   one named wins: it is the region the exam was ordered for; the second is its context.
6. The phrases of :data:`NOT_UPPER_LIMB` (toes in Spanish, Portuguese and Italian, whose word for
   toe is "finger of the foot") are consumed as naming no study type, so ``"DEDO DEL PIE"`` is
   not a FINGER. An admin who lists the same phrase under a study type overrides this.

Fields (:func:`study_type_of`): Body Part Examined, then Protocol Name, Series Description, Study
Description. The first field that names a study type decides, so a view's own Body Part Examined
beats the study-level description ("WRIST" in a "HAND AND WRIST" study is a WRIST view).
A study's type (:func:`study_type_of_study`) is the most common type of its views.

This module is pure: it reads attributes of pydicom datasets and never opens a file.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from pydicom.dataset import Dataset

MURA_STUDY_TYPES: tuple[str, ...] = ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST")

#: study type -> words and phrases that name it: DICOM Body Part Examined defined terms, English
#: words and abbreviations, and the common words of German, French, Spanish, Italian, Dutch and
#: Portuguese (written here without accents; matching strips them from the text). A thumb is a
#: FINGER study, as in MURA. "ARM" (and BRAS, BRAZO, BRACCIO, BRACO) alone is ambiguous: not listed.
DEFAULT_BODY_PARTS: dict[str, list[str]] = {
    "ELBOW": [
        "ELBOW", "ELBOWS", "ELB", "ELBW",
        "ELLENBOGEN", "ELLBOGEN", "ELLENBOGENGELENK",       # de
        "COUDE", "COUDES",                                  # fr
        "CODO", "CODOS",                                    # es
        "GOMITO", "GOMITI",                                 # it
        "ELLEBOOG", "ELLEBOGEN",                            # nl
        "COTOVELO", "COTOVELOS",                            # pt
    ],
    "FINGER": [
        "FINGER", "FINGERS", "FNGR", "FING", "THUMB", "THUMBS", "THMB",
        "FINGERN", "DAUMEN",                                # de (FINGER as in English)
        "DOIGT", "DOIGTS", "POUCE", "POUCES",               # fr
        "DEDO", "DEDOS", "PULGAR", "PULGARES",              # es, pt (DEDO)
        "DITO", "DITA", "POLLICE", "POLLICI",               # it
        "VINGER", "VINGERS", "DUIM", "DUIMEN",              # nl
        "POLEGAR", "POLEGARES",                             # pt
    ],
    "FOREARM": [
        "FOREARM", "FOREARMS", "FORE ARM", "LOWER ARM", "LOWERARM",
        "RADIUS ULNA", "ULNA RADIUS", "RADIUS AND ULNA",
        "UNTERARM",                                         # de
        "AVANT BRAS", "AVANTBRAS",                          # fr
        "ANTEBRAZO",                                        # es
        "AVAMBRACCIO",                                      # it
        "ONDERARM",                                         # nl
        "ANTEBRACO",                                        # pt
    ],
    "HAND": [
        "HAND", "HANDS", "HND",
        "HANDE", "MITTELHAND",                              # de (HAND as in English)
        "MAIN", "MAINS",                                    # fr
        "MANO", "MANOS",                                    # es, it (MANO)
        "MANI",                                             # it
        "HANDEN",                                           # nl
        "MAO", "MAOS",                                      # pt
    ],
    "HUMERUS": [
        "HUMERUS", "HUMERI", "HUM", "UPPER ARM", "UPPERARM", "UPR ARM",
        "OBERARM",                                          # de (HUMERUS also de, fr, nl)
        "HUMERO",                                           # es
        "OMERO",                                            # it
        "BOVENARM",                                         # nl
        "UMERO",                                            # pt
    ],
    "SHOULDER": [
        "SHOULDER", "SHOULDERS", "SHLDR", "SHLD",
        "SCHULTER", "SCHULTERN", "SCHULTERGELENK",          # de
        "EPAULE", "EPAULES",                                # fr
        "HOMBRO", "HOMBROS",                                # es
        "SPALLA", "SPALLE",                                 # it
        "SCHOUDER", "SCHOUDERS",                            # nl
        "OMBRO", "OMBROS",                                  # pt
    ],
    "WRIST": [
        "WRIST", "WRISTS", "WRST", "SCAPHOID",
        "HANDGELENK", "HANDGELENKE", "HANDWURZEL",          # de
        "POIGNET", "POIGNETS",                              # fr
        "MUNECA", "MUNECAS",                                # es
        "POLSO", "POLSI",                                   # it
        "POLS", "POLSEN",                                   # nl
        "PUNHO", "PUNHOS",                                  # pt
    ],
}

#: phrases that contain a study type's word but name another region: they match as "no study type"
#: (toes: "finger of the foot" in Spanish, Portuguese and Italian; "dedo gordo" is the big toe).
NOT_UPPER_LIMB: tuple[str, ...] = (
    "DEDO DEL PIE", "DEDOS DEL PIE", "DEDO PIE", "DEDOS PIE", "DEDO GORDO",
    "DEDO DO PE", "DEDOS DO PE", "DEDO PE", "DEDOS PE",
    "DITO DEL PIEDE", "DITA DEL PIEDE", "DITO PIEDE", "DITA PIEDE",
)

#: words dropped before matching, so that phrases match across them: laterality and view words in
#: the same languages, and words that say "radiograph". None of them may name a body part.
DEFAULT_IGNORED_WORDS: list[str] = [
    # laterality
    "LEFT", "RIGHT", "BILATERAL", "BILAT", "BOTH", "L", "R", "LT", "RT", "LFT", "RGT",
    "LINKS", "RECHTS", "LINKE", "RECHTE", "LINKER", "RECHTER", "LINKES", "RECHTES", "LI", "RE",
    "LKS", "BDS", "BEIDSEITIG", "BEIDSEITS", "BEIDE",                                    # de, nl
    "GAUCHE", "DROIT", "DROITE", "G", "D", "GCHE", "DTE", "BILATERALE",                  # fr
    "IZQUIERDO", "IZQUIERDA", "DERECHO", "DERECHA", "IZQ", "IZDA", "IZDO", "IZQDA", "IZQDO",
    "DCHA", "DCHO", "DRCHA", "DRCHO", "DER", "I", "AMBOS", "AMBAS",                       # es
    "SINISTRO", "SINISTRA", "DESTRO", "DESTRA", "SIN", "DX", "SX", "ENTRAMBI",            # it
    "ESQUERDO", "ESQUERDA", "DIREITO", "DIREITA", "ESQ", "DIR", "E",                      # pt
    # views
    "AP", "PA", "DP", "DV", "LAT", "LATERAL", "LATERALE", "LATERAAL", "OBLIQUE", "OBL",
    "OBLIQUA", "OBLICUA", "OBLIQUO", "SCHRAG", "SCHRAEG", "SEITLICH", "FRONTAL", "PROFIL",
    "PERFIL", "PROFILO", "AXIAL", "Y", "VIEW", "VIEWS", "VUE", "VUES", "PROJ", "PROYECCION",
    "PROYECCIONES", "PROIEZIONE", "PROIEZIONI", "INCIDENCE", "INCIDENCES", "INCIDENCIA",
    "AUFNAHME", "OPNAME", "STANDARD", "ROUTINE",
    # radiograph
    "XR", "X-RAY", "XRAY", "RX", "CR", "DR", "RONTGEN", "RO", "RADIOGRAPH", "RADIOGRAPHY",
    "RADIOGRAPHIE", "RADIOGRAFIA", "RADIOGRAFIE", "PLAIN", "FILM",
]

#: the attributes looked at, in order of priority
TEXT_FIELDS: tuple[str, ...] = ("BodyPartExamined", "ProtocolName", "SeriesDescription", "StudyDescription")

_LETTERS = str.maketrans({"Æ": "AE", "Œ": "OE", "Ø": "O"})
_MAX_SHOWN = 64

Phrase = tuple[str, ...]


def normalise(text: str) -> list[str]:
    """Upper-case, strip accents (unicodedata NFKD), split on anything not A-Z/0-9 into tokens."""
    decomposed = unicodedata.normalize("NFKD", text.upper().translate(_LETTERS))
    ascii_text = "".join(c if "A" <= c <= "Z" or "0" <= c <= "9" else " " for c in decomposed
                         if not unicodedata.combining(c))
    return ascii_text.split()


@dataclass(frozen=True)
class _Table:
    phrases: dict[Phrase, str | None]   # phrase -> study type, None for NOT_UPPER_LIMB
    ignored: frozenset[Phrase]
    longest: int


@lru_cache(maxsize=32)
def _compile(body_parts: tuple[tuple[str, tuple[str, ...]], ...], ignored: tuple[str, ...]) -> _Table:
    phrases: dict[Phrase, str | None] = {tuple(normalise(p)): None for p in NOT_UPPER_LIMB}
    owner: dict[Phrase, str] = {}
    for key, words in body_parts:
        study_type = key.strip().upper()
        if study_type not in MURA_STUDY_TYPES:
            raise ValueError(f"unknown study type {key!r} (one of {', '.join(MURA_STUDY_TYPES)})")
        for word in words:
            phrase = tuple(normalise(str(word)))
            if not phrase:
                raise ValueError(f"{study_type}: {word!r} has no letters or digits")
            if owner.get(phrase, study_type) != study_type:
                raise ValueError(f"{word!r} is listed under both {owner[phrase]} and {study_type}")
            owner[phrase] = study_type
            phrases[phrase] = study_type
    ignored_phrases = frozenset(p for p in (tuple(normalise(str(w))) for w in ignored) if p)
    longest = max(len(p) for p in (*phrases, *ignored_phrases))
    return _Table(phrases, ignored_phrases, longest)


def _table(body_parts: Mapping[str, Sequence[str]], ignored: Sequence[str]) -> _Table:
    if isinstance(ignored, str) or any(isinstance(v, str) for v in body_parts.values()):
        raise TypeError("body parts and ignored words are lists of words, not one string")
    key = tuple((k, tuple(v)) for k, v in body_parts.items())
    return _compile(key, tuple(ignored))


def _longest_at(tokens: Sequence[str], i: int, known: Container[Phrase], longest: int) -> int:
    """The length of the longest phrase of ``known`` starting at ``tokens[i]``, 0 when none."""
    for n in range(min(longest, len(tokens) - i), 0, -1):
        if tuple(tokens[i:i + n]) in known:
            return n
    return 0


def study_type_from_text(text: str | None, body_parts: Mapping[str, Sequence[str]],
                         ignored: Sequence[str]) -> str | None:
    """The study type one free-text value names, or None; the first named wins (module docstring)."""
    if not text:
        return None
    table = _table(body_parts, ignored)
    tokens, kept, i = normalise(text), [], 0
    while i < len(tokens):
        n = _longest_at(tokens, i, table.ignored, table.longest)
        if not n:
            kept.append(tokens[i])
        i += n or 1
    i = 0
    while i < len(kept):
        n = _longest_at(kept, i, table.phrases, table.longest)
        if n and table.phrases[tuple(kept[i:i + n])] is not None:
            return table.phrases[tuple(kept[i:i + n])]
        i += n or 1
    return None


def _values(ds: Dataset, keyword: str) -> list[str]:
    """An attribute's values as strings: [] when missing or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [str(v) for v in value]
    return [str(value)]


def _text(ds: Dataset, keyword: str) -> str:
    """An attribute's value as one string, multiple values joined by spaces."""
    return " ".join(_values(ds, keyword)).strip()


#: DICOM Body Part Examined defined terms (PS3.16 Annex L) of regions outside the upper limb: a
#: view that says so is of that region, whatever the study's descriptions mention.
OTHER_BODY_PARTS: frozenset[str] = frozenset({
    "ABDOMEN", "ANKLE", "BREAST", "CALCANEUS", "CHEST", "CLAVICLE", "COCCYX", "CSPINE",
    "FEMUR", "FOOT", "HEAD", "HEEL", "HIP", "JAW", "KNEE", "LEG", "LSPINE", "LOWEREXTREMITY",
    "LOWER_EXTREMITY", "NECK", "PATELLA", "PELVIS", "RIB", "RIBS", "SACRUM", "SKULL", "SPINE",
    "SSPINE", "TSPINE", "TIBIA", "FIBULA", "TOE", "TOES", "WHOLEBODY", "WHOLE_BODY", "ZYGOMA",
    "NOSE", "ORBIT", "MANDIBLE", "SINUS", "SCAPULA", "STERNUM", "THORAX", "TMJ",
})


def study_type_of(ds: Dataset, body_parts: Mapping[str, Sequence[str]] = DEFAULT_BODY_PARTS,
                  ignored: Sequence[str] = DEFAULT_IGNORED_WORDS) -> str | None:
    """Look at Body Part Examined, then Protocol Name, Series Description, Study Description; the
    first field that names a study type decides. None when none does, or when Body Part Examined
    is a defined term of another region (:data:`OTHER_BODY_PARTS`): a KNEE view in a study
    described as "HAND AND KNEE" is no HAND."""
    if _text(ds, "BodyPartExamined").strip().upper().replace(" ", "") in OTHER_BODY_PARTS \
            and study_type_from_text(_text(ds, "BodyPartExamined"), body_parts, ignored) is None:
        return None
    for keyword in TEXT_FIELDS:
        study_type = study_type_from_text(_text(ds, keyword), body_parts, ignored)
        if study_type is not None:
            return study_type
    return None


def _default_body_parts() -> dict[str, list[str]]:
    return {k: list(v) for k, v in DEFAULT_BODY_PARTS.items()}


@dataclass(frozen=True)
class SelectionRules:
    """What gets scored (the ``scoring`` section of the config); checked when built."""

    #: Modality (0008,0060) values that are scored
    modalities: tuple[str, ...] = ("CR", "DX")
    #: any of these values in Image Type (0008,0008) -> not scored
    excluded_image_types: tuple[str, ...] = ("LOCALIZER",)
    #: Presentation Intent Type (0008,0068) FOR PROCESSING (raw detector data) -> not scored unless True
    score_for_processing: bool = False
    #: a view whose body part names no study type: scored without a type, or reported "not analysed"
    unmapped_body_part: Literal["score", "not_analysed"] = "score"
    #: study type -> words and phrases; replaces the defaults (it is not merged with them)
    body_parts: Mapping[str, Sequence[str]] = field(default_factory=_default_body_parts)
    #: words dropped before matching; replaces the defaults
    ignored_words: Sequence[str] = field(default_factory=lambda: tuple(DEFAULT_IGNORED_WORDS))

    def __post_init__(self) -> None:
        if self.unmapped_body_part not in ("score", "not_analysed"):
            raise ValueError(f"unmapped_body_part must be 'score' or 'not_analysed', "
                             f"not {self.unmapped_body_part!r}")
        _table(self.body_parts, self.ignored_words)   # raises ValueError on a bad table


@dataclass(frozen=True)
class ViewSelection:
    scored: bool
    #: the MURA study type, None when unmapped (filled in for views that are not scored too)
    study_type: str | None
    #: why the view is not scored, for the report; None when scored
    reason: str | None


def _upper(values: Iterable[str]) -> set[str]:
    return {v.strip().upper() for v in values}


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 3] + "...")


def select_view(ds: Dataset, rules: SelectionRules = SelectionRules()) -> ViewSelection:
    """Whether one instance is scored, its study type, and if not scored, why.

    Checked in order: modality, image type, presentation intent, body part.
    """
    study_type = study_type_of(ds, rules.body_parts, rules.ignored_words)

    def not_scored(reason: str) -> ViewSelection:
        return ViewSelection(scored=False, study_type=study_type, reason=reason)

    modality = _text(ds, "Modality").upper()
    if modality not in _upper(rules.modalities):
        return not_scored(f"modality {modality or '(none)'} is not scored "
                          f"(scoring.modalities: {', '.join(rules.modalities)})")
    excluded = _upper(_values(ds, "ImageType")) & _upper(rules.excluded_image_types)
    if excluded:
        return not_scored(f"image type {', '.join(sorted(excluded))} is not scored")
    for_processing = _text(ds, "PresentationIntentType").upper() == "FOR PROCESSING"
    if for_processing and not rules.score_for_processing:
        return not_scored("for-processing images are not scored")
    if study_type is None and rules.unmapped_body_part == "not_analysed":
        # Only Body Part Examined (a coded string) is quoted: the descriptions are free text that
        # may carry patient data, and this reason reaches logs, the database and the SR.
        part = _text(ds, "BodyPartExamined")
        if part:
            return not_scored(f"body part not supported: {_shown(part)}")
        described = any(_text(ds, k) for k in TEXT_FIELDS)
        return not_scored("body part not supported: no Body Part Examined, and the descriptions "
                          "name no supported body part" if described
                          else "body part not supported: no body part or description")
    return ViewSelection(scored=True, study_type=study_type, reason=None)


def study_type_of_study(types: Iterable[str | None]) -> str | None:
    """The study's type: the most common non-None type of its views (ties: the first in
    MURA_STUDY_TYPES order), None if none."""
    counts = Counter(t for t in types if t is not None)
    if not counts:
        return None

    def rank(t: str) -> tuple[int, int]:
        order = MURA_STUDY_TYPES.index(t) if t in MURA_STUDY_TYPES else len(MURA_STUDY_TYPES)
        return (-counts[t], order)

    return min(counts, key=rank)
