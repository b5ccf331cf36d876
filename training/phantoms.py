"""Synthetic musculoskeletal radiographs ("phantoms") of the seven MURA study types, with truth.

``radtriage phantoms OUT --studies N --seed S`` writes studies of procedurally generated upper-limb
radiographs in the MURA-v1.1 layout (8-bit PNG and its CSVs) and as DICOM (CR and DX, MONOCHROME1
and 2, 10 to 16 bits stored, four transfer syntaxes) with a ``truth.csv`` of labels and boxes.
``docs/phantoms.md`` is the user's page; this docstring is the map of the code.

The path of one view (pure, every random number from a ``numpy.random.Generator`` handed in)::

    Subject, Pose       who (size, build, side, the finger examined) and how they are posed for
                        this view (abduction, elbow flexion, wrist, fingers, the camera angle phi)
    _build              one 3D model of the whole upper limb (shoulder girdle, ribs, lung, humerus,
                        radius, ulna, carpus, rays) in millimetres, as primitives: tubes (solids of
                        revolution: cortex + medulla, flared ends, rounded caps), ellipsoid shells,
                        flat slabs (the scapula); soft tissue and lung the same way
    findings            applied in 3D, so each view shows the same lesion in its own projection:
                        a fracture splits a bone into two fragments (a gap, optionally displaced
                        and angulated), a lesion rides on a bone, hardware adds metal, a
                        dislocation moves a segment (and everything distal to it) off its joint
    _Camera             orthographic projection: rotation phi about the limb, laterality flip,
                        in-plane rotation, scale and offset chosen to frame the study type's
                        region of interest (from the model *without* findings)
    _raster             analytic path lengths per pixel -> attenuation -> ``1 - exp(-A)``; the
                        boxes come from the pixels each finding touched, in the final frame
    radiograph          the realism pass: exposure and contrast, scatter, heel effect, blur,
                        quantum and electronic noise, log and auto-window, edge enhancement,
                        collimation, a burned-in L/R marker and a text line (kept off the boxes)

:func:`render_view` is the first half (anatomy, findings, geometry), :func:`radiograph` the
second; :func:`render_study` renders the views of one :class:`StudyPlan` from
:func:`plan_studies`; :func:`generate` writes everything. Studies are independent given the seed
(each draws from its own ``numpy.random.SeedSequence`` key), so the same seed gives byte-identical
files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TextIO

import cv2
import numpy as np

from dicom_io.bodypart import MURA_STUDY_TYPES

#: bumped whenever the same seed would give different files
VERSION = "1.2"

STUDY_TYPES: tuple[str, ...] = MURA_STUDY_TYPES
FINDINGS: tuple[str, ...] = ("fracture", "lytic", "sclerotic", "hardware", "dislocation")
FORMATS: tuple[str, ...] = ("mura", "dicom")

#: the views of each study type, in the order a study takes them (a 4th view repeats the first)
VIEWS: dict[str, tuple[str, ...]] = {
    "ELBOW": ("AP", "LAT", "OBL"),
    "FINGER": ("PA", "LAT", "OBL"),
    "FOREARM": ("AP", "LAT"),
    "HAND": ("PA", "OBL", "LAT"),
    "HUMERUS": ("AP", "LAT"),
    "SHOULDER": ("AP", "AP_INT", "Y"),
    "WRIST": ("PA", "LAT", "OBL"),
}

#: how many views a study has: (1, 2, 3, 4) weights per study type (MURA: mostly 2-3)
_VIEW_COUNTS: dict[str, tuple[float, float, float, float]] = {
    "ELBOW": (0.10, 0.35, 0.45, 0.10),
    "FINGER": (0.10, 0.30, 0.50, 0.10),
    "FOREARM": (0.15, 0.75, 0.10, 0.00),
    "HAND": (0.10, 0.25, 0.55, 0.10),
    "HUMERUS": (0.15, 0.75, 0.10, 0.00),
    "SHOULDER": (0.15, 0.40, 0.35, 0.10),
    "WRIST": (0.05, 0.25, 0.45, 0.25),
}

MM = float  # millimetres in the model
_MU_SOFT = 0.0095   # attenuation per mm (relative units) of soft tissue,
_MU_BONE = 0.085    # of cortical bone (medulla is a fraction of it: rho),
_MU_METAL = 1.2     # of metal (saturates)
#: soft tissue attenuation factor per study type (a shoulder is exposed at a higher kVp)
_SOFT_FACTOR = {"SHOULDER": 0.55, "HUMERUS": 0.8}


# -- public value types -------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A finding's box in one view's pixels: x columns, y rows, edges inclusive."""

    finding: str
    x0: int
    y0: int
    x1: int
    y1: int

    def as_dict(self, sop_instance_uid: str | None = None) -> dict:
        out: dict = {} if sop_instance_uid is None else {"sop_instance_uid": sop_instance_uid}
        out.update(finding=self.finding, x0=self.x0, y0=self.y0, x1=self.x1, y1=self.y1)
        return out


@dataclass(frozen=True)
class Finding:
    """One abnormality of a study, defined on the 3D model so that every view shows the same one.

    ``target`` is a bone (``radius``, ``mc3``, ``p22`` ...) or, for a dislocation, the segment that
    comes off its joint (``humerus``, ``forearm``, ``hand``, ``p31`` ...). ``tau`` is the position
    along the bone, 0 at its proximal end and 1 at its distal end. ``params`` are the kind's shape
    parameters (see :func:`draw_finding`); ``style`` names the hardware (plate, nail, kwire, screw).
    """

    kind: str
    target: str
    tau: float = 0.5
    style: str = ""
    params: tuple[tuple[str, float], ...] = ()

    def p(self, key: str, default: float = 0.0) -> float:
        for k, v in self.params:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "tau": round(self.tau, 4),
                "style": self.style, "params": {k: round(v, 4) for k, v in self.params}}


@dataclass(frozen=True)
class Subject:
    """The patient's body: the same across the views (and studies) of one patient."""

    side: str = "R"          #: laterality of the examined limb, "L" or "R"
    scale: float = 1.0       #: body size (bone lengths and widths)
    soft: float = 1.0        #: soft-tissue build (thin 0.8 .. heavy 1.4)
    cortex: float = 1.0      #: cortical thickness (osteopenia < 1)
    density: float = 1.0     #: cancellous bone density
    finger: int = 2          #: the finger of a FINGER study, 1 (thumb) to 5
    seed: int = 0            #: per-bone proportions


@dataclass(frozen=True)
class Pose:
    """How the limb is held for one view, and the camera's rotation about the limb (phi)."""

    abduction: float = 8.0
    humeral_rotation: float = 0.0
    elbow_flexion: float = 5.0
    carrying: float = 10.0
    wrist_flexion: float = 0.0
    wrist_deviation: float = 0.0
    fingers: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),) * 5
    spread: float = 1.0
    phi: float = 0.0


# -- small geometry ------------------------------------------------------------------------------


def _rot(axis: str, deg: float) -> np.ndarray:
    """Right-handed rotation about x, y or z. Rx(+) turns +y towards +z, Rz(+) turns +y to -x."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rot_about(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rodrigues: rotation by ``deg`` about the unit vector ``axis``."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


@dataclass(frozen=True)
class _Frame:
    o: np.ndarray
    R: np.ndarray

    def p(self, local: Sequence[float]) -> np.ndarray:
        return self.o + self.R @ np.asarray(local, dtype=float)

    def child(self, origin: Sequence[float], R: np.ndarray) -> "_Frame":
        return _Frame(self.p(origin), self.R @ R)


# -- primitives (3D, millimetres, world coordinates) ---------------------------------------------
# x lateral (radial side), y distal (down the limb), z anterior (palmar; towards the camera in AP)


@dataclass
class _Tube:
    """A solid of revolution (elliptic cross-section) from p0 to p1: a bone, soft tissue or metal."""

    name: str
    segment: str
    p0: np.ndarray
    p1: np.ndarray
    r: tuple[float, float, float]            # outer radius: proximal end, shaft, distal end
    flare: tuple[float, float] = (0.15, 0.15)  # fraction of the length over which it flares
    cortex: tuple[float, float] = (2.0, 0.8)   # cortical thickness: shaft, ends
    cap: tuple[float, float] = (0.0, 0.0)      # rounded cap lengths beyond p0 and p1
    rho: tuple[float, float] = (0.1, 0.3)      # medulla density (of cortex): shaft, ends
    bow: float = 0.0                           # bowing at the middle, along e_a
    section: tuple[float, float] = (1.0, 1.0)  # cross-section semi-axes (x r) along e_a, e_b
    kind: str = "bone"                         # bone, soft, metal, air
    e_a: np.ndarray = field(default_factory=lambda: np.array([1.0, 0, 0]))
    e_b: np.ndarray = field(default_factory=lambda: np.array([0, 0, 1.0]))
    thread: float = 0.0                        # screw thread pitch (mm), 0: smooth
    fid: int = -1                              # the finding this primitive belongs to (metal)
    clip: tuple | None = None                  # fracture: (centre, normal, gap, side, jag...)
    lesions: list = field(default_factory=list)
    group: str = ""                            # parts of one bone: their union, not their sum

    @property
    def axis(self) -> np.ndarray:
        return _unit(self.p1 - self.p0)

    def radius_at(self, tau: float) -> float:
        w0 = _smooth_scalar(1 - tau / max(self.flare[0], 1e-3))
        w1 = _smooth_scalar((tau - 1) / max(self.flare[1], 1e-3) + 1)
        return self.r[1] + (self.r[0] - self.r[1]) * w0 + (self.r[2] - self.r[1]) * w1

    def point_at(self, tau: float) -> np.ndarray:
        """The (bowed) centreline at ``tau``."""
        return self.p0 + tau * (self.p1 - self.p0) + self.bow * 4 * tau * (1 - tau) * self.e_a

    def moved(self, R: np.ndarray, centre: np.ndarray, shift: np.ndarray) -> "_Tube":
        """A copy moved rigidly: rotated by R about ``centre``, then shifted."""
        def m(p: np.ndarray) -> np.ndarray:
            return centre + R @ (p - centre) + shift
        return replace(self, p0=m(self.p0), p1=m(self.p1), e_a=R @ self.e_a, e_b=R @ self.e_b,
                       lesions=list(self.lesions), group="")


@dataclass
class _Ellipsoid:
    name: str
    segment: str
    c: np.ndarray
    axes: np.ndarray            # semi-axes (mm)
    Q: np.ndarray               # orientation: columns are the semi-axis directions
    shell: float = 1.0          # cortical shell thickness
    rho: float = 0.3            # inner density (of cortex)
    kind: str = "bone"          # bone, soft, air, void (a hollow in bone), metal
    fid: int = -1
    group: str = ""


@dataclass
class _Slab:
    """A flat plate of bone (the scapular body): a polygon with a thickness."""

    name: str
    segment: str
    pts: np.ndarray             # (n, 3)
    thickness: float
    rho: float = 1.0
    group: str = ""


@dataclass
class _Joint:
    parent_point: np.ndarray    # the joint centre on the parent's side (world)
    child_point: np.ndarray     # the child's origin, where it is (world)
    radius: MM


@dataclass
class _Model:
    prims: list
    bones: dict
    joints: dict


def _smooth_scalar(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# -- the 3D model --------------------------------------------------------------------------------

#: rays: base in the hand frame, spread (deg towards radial), palmar tilt, metacarpal length,
#: phalanx lengths (proximal, middle, distal; the thumb has no middle), shaft radius
_RAYS = {
    1: ((24.0, 30.0, 9.0), 32.0, 35.0, 46.0, (32.0, 0.0, 25.0), 4.6),
    2: ((11.0, 37.0, 0.0), 5.0, 0.0, 68.0, (43.0, 26.0, 19.0), 4.3),
    3: ((0.0, 38.0, 0.0), 0.0, 0.0, 65.0, (47.0, 29.0, 20.0), 4.4),
    4: ((-10.0, 37.0, -1.0), -5.0, 0.0, 58.0, (44.0, 28.0, 20.0), 4.0),
    5: ((-19.0, 35.0, -3.0), -11.0, 0.0, 54.0, (35.0, 21.0, 18.0), 3.7),
}
_JOINT_GAP = 1.6


def _phalanx_names(ray: int) -> tuple[str, ...]:
    return (f"p{ray}1", f"p{ray}3") if ray == 1 else (f"p{ray}1", f"p{ray}2", f"p{ray}3")


def _build(subject: Subject, pose: Pose,
           moved: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> _Model:
    """The posed upper limb. ``moved``: segment -> (shift in the parent frame, extra rotation)."""
    moved = moved or {}
    s, soft, cx, dens = subject.scale, subject.soft, subject.cortex, subject.density
    jitter_rng = np.random.default_rng([subject.seed, 7])
    jit = [float(np.clip(1 + 0.035 * jitter_rng.standard_normal(), 0.92, 1.08)) for _ in range(32)]
    prims: list = []
    bones: dict = {}
    joints: dict = {}

    def frame_of(segment: str, parent: _Frame, origin: Sequence[float], R: np.ndarray) -> _Frame:
        fr = parent.child(origin, R)
        if segment in moved:
            shift, extra = moved[segment]
            moved_fr = _Frame(fr.o + parent.R @ shift, fr.R @ extra)
            return moved_fr
        return fr

    def joint(segment: str, parent: _Frame, origin: Sequence[float], child: _Frame, radius: float) -> None:
        """The joint a segment hangs from, named after the segment (a dislocation's target)."""
        joints[segment] = _Joint(parent.p(origin), child.o.copy(), radius * s)

    def tube(name: str, seg: str, fr: _Frame, a: Sequence[float], b: Sequence[float],
             r: Sequence[float], *, flare=(0.15, 0.15), cortex=(2.0, 0.8), cap=(0.0, 0.0),
             rho=(0.1, 0.3), bow=0.0, section=(1.0, 1.0), kind="bone",
             side=(1.0, 0.0, 0.0), group="") -> _Tube:
        p0, p1 = fr.p(np.asarray(a) * s), fr.p(np.asarray(b) * s)
        axis = _unit(p1 - p0)
        e = fr.R @ np.asarray(side, dtype=float)
        if abs(float(e @ axis)) > 0.95:
            e = fr.R @ np.array([0.0, 0.0, 1.0])
        e_a = _unit(e - axis * float(e @ axis))
        e_b = np.cross(axis, e_a)
        f = s * (soft if kind == "soft" else 1.0)
        t = _Tube(name, seg, p0, p1, tuple(float(v) * f for v in r), tuple(flare),
                  (cortex[0] * s * cx, cortex[1] * s * cx), (cap[0] * f, cap[1] * f),
                  (rho[0] * dens, rho[1] * dens), bow * s, tuple(section), kind, e_a, e_b, group=group)
        prims.append(t)
        if kind == "bone":
            bones[name] = t
        return t

    def ell(name: str, seg: str, fr: _Frame, c: Sequence[float], axes: Sequence[float], *,
            rot: np.ndarray | None = None, shell=1.0, rho=0.32, kind="bone", group="") -> _Ellipsoid:
        f = s * (soft if kind in ("soft", "air") else 1.0)
        e = _Ellipsoid(name, seg, fr.p(np.asarray(c) * s), np.asarray(axes, dtype=float) * f,
                       fr.R @ (np.eye(3) if rot is None else rot), shell * s * cx, rho * dens, kind,
                       group=group)
        prims.append(e)
        if kind == "bone":
            bones[name] = e
        return e

    world = _Frame(np.zeros(3), np.eye(3))

    # shoulder girdle, chest wall and lung (fixed: the "thorax" segment)
    T = "thorax"
    ell("torso", T, world, (-185, 170, -5), (165, 330, 120), kind="soft", shell=0)
    ell("neck", T, world, (-150, -95, -20), (105, 75, 70), kind="soft", shell=0)
    ell("deltoid", T, world, (8, 25, 0), (44, 78, 46), kind="soft", shell=0)
    ell("lung", T, world, (-155, 170, 5), (92, 205, 58), kind="air", shell=0)
    for j in range(8):
        y0 = -42 + 31 * j
        reach = 192 + 9 * j
        post = [(-260 + reach * math.sin(u * math.pi / 2), y0 + 26 * u * u, -90 + 62 * u)
                for u in np.linspace(0, 1, 10)]
        lat = post[-1]
        ant = [(lat[0] - 150 * math.sin(u * math.pi / 2) ** 1.5, lat[1] + 58 * u, lat[2] + 105 * u)
               for u in np.linspace(0, 1, 7)]
        pts = post + ant[1:]
        for q in range(len(pts) - 1):
            tube(f"rib{j}_{q}", T, world, pts[q], pts[q + 1], (5.5, 5.5, 5.5), cortex=(0.8, 0.8),
                 cap=(5.5, 5.5), rho=(0.16, 0.16), section=(1.0, 0.45), side=(0, 1, 0),
                 flare=(0.0, 0.0), group=f"rib{j}")
    tube("clavicle", T, world, (-168, -62, 35), (-2, -57, -8), (9, 6.5, 9.5), flare=(0.2, 0.25),
         cortex=(2.2, 1.0), cap=(5, 4), rho=(0.18, 0.3), bow=-5, side=(0, 1, 0), section=(1.0, 0.85))
    G = "scapula"
    ell("glenoid", T, world, (-29, 2, -4), (7, 19, 14), shell=1.4, rho=0.36, group=G)
    tube("glenoid_neck", T, world, (-62, 22, -22), (-31, 3, -5), (16, 10, 12), flare=(0.5, 0.3),
         cortex=(1.3, 1.0), cap=(4, 3), rho=(0.25, 0.3), section=(1.0, 0.6), side=(0, 1, 0), group=G)
    tube("spine", T, world, (-148, -12, -76), (-42, -46, -26), (5, 5, 7), cortex=(1.3, 1.1),
         rho=(0.3, 0.3), section=(1.0, 0.55), side=(0, 1, 0), cap=(3, 8), group=G)
    tube("acromion", T, world, (-42, -46, -26), (16, -43, -8), (8, 8.5, 8), flare=(0.25, 0.25),
         cortex=(1.4, 1.1), cap=(8, 7), rho=(0.3, 0.3), bow=4, section=(1.0, 0.5), side=(0, 1, 0),
         group=G)
    tube("coracoid_base", T, world, (-40, -14, -8), (-27, -24, 10), (7, 6, 6), cortex=(1.3, 1.0),
         cap=(6, 5), rho=(0.3, 0.3), group=G)
    ell("coracoid", T, world, (-21, -24, 22), (6.5, 6, 14), rot=_rot("y", 25), shell=0.9, rho=0.3,
        group=G)
    scap = np.array([(-38, 12, -12), (-72, 115, -42), (-88, 135, -52), (-150, 40, -80),
                     (-143, -25, -72), (-95, -22, -48), (-45, -12, -16)], dtype=float) * s
    prims.append(_Slab("scapula", T, scap, 3.5 * s, 1.0 * dens, group=G))
    tube("scapula_lateral", T, world, (-40, 14, -13), (-86, 132, -51), (6, 5, 5.5),
         cortex=(1.6, 1.2), rho=(0.3, 0.3), cap=(2, 4), section=(1.0, 0.6), group=G)
    tube("scapula_medial", T, world, (-146, -22, -73), (-150, 40, -80), (3, 3, 3), cortex=(1.2, 1.2),
         rho=(0.3, 0.3), cap=(2, 2), group=G)
    tube("scapula_medial2", T, world, (-150, 40, -80), (-88, 135, -52), (3, 3, 3.5), cortex=(1.2, 1.2),
         rho=(0.3, 0.3), cap=(2, 3), group=G)

    # humerus: origin at the centre of the head
    Lh = 300.0 * jit[0]
    arm = frame_of("humerus", world, (0, 0, 0),
                   _rot("z", -pose.abduction) @ _rot("y", pose.humeral_rotation))
    joint("humerus", world, (0, 0, 0), arm, 23)
    H = "humerus"
    tube("arm_soft", H, arm, (0, -25, 0), (0, Lh - 10, -4), (44, 41, 43), cap=(20, 25), kind="soft",
         section=(1.0, 0.95))
    ell("elbow_soft", H, arm, (0, Lh - 12, -6), (44, 46, 40), kind="soft", shell=0)
    ell("head", H, arm, (0, 0, 0), (22.5, 23.5, 22.5), shell=1.0, rho=0.34, rot=_rot("z", 25), group=H)
    ell("greater_tuberosity", H, arm, (18, 10, 5), (9, 13, 9), shell=0.6, rho=0.32, group=H)
    ell("lesser_tuberosity", H, arm, (3, 11, 16), (6, 8, 6), shell=0.6, rho=0.32, group=H)
    tube("humerus", H, arm, (4, 10, 0), (0, Lh - 22, 0), (20, 11, 25), flare=(0.17, 0.2),
         cortex=(3.4, 0.9), cap=(0, 7), rho=(0.07, 0.32), section=(1.0, 0.8), group=H)
    ell("capitulum", H, arm, (12, Lh - 15, 4), (11, 10, 11), shell=0.6, rho=0.34, group=H)
    ell("trochlea", H, arm, (-8, Lh - 14, 0), (14, 11, 12), shell=0.7, rho=0.34, group=H)
    ell("medial_epicondyle", H, arm, (-27, Lh - 25, -2), (9, 11, 8), shell=0.7, rho=0.33, group=H)
    ell("lateral_epicondyle", H, arm, (24, Lh - 27, 0), (7, 10, 7), shell=0.7, rho=0.33, group=H)
    ell("olecranon_fossa", H, arm, (0, Lh - 30, -6), (10, 11, 6), shell=0, rho=0.35, kind="void")
    ell("coronoid_fossa", H, arm, (0, Lh - 28, 6), (7, 7, 4), shell=0, rho=0.25, kind="void")

    # forearm: origin at the elbow's axis of flexion
    Lr = 235.0 * jit[1]
    fore = frame_of("forearm", arm, (0, (Lh - 14) * s, 0),
                    _rot("x", pose.elbow_flexion) @ _rot("z", -pose.carrying))
    joint("forearm", arm, (0, (Lh - 14) * s, 0), fore, 24)
    F = "forearm"
    tube("forearm_soft", F, fore, (0, -10, 0), (3, Lr + 18, 0), (39, 34, 27), cap=(25, 14),
         flare=(0.3, 0.3), kind="soft", section=(1.0, 0.78))
    ell("radial_head", F, fore, (12, 15, 1), (11, 4.5, 11), shell=0.9, rho=0.34, group="radius")
    tube("radius", F, fore, (12, 17, 2), (16, Lr, 2), (6.0, 7.0, 15.5), flare=(0.1, 0.16),
         cortex=(2.7, 0.9), cap=(1, 3), rho=(0.08, 0.32), bow=3.5, section=(1.0, 0.75), group="radius")
    ell("radial_tuberosity", F, fore, (8, 28, 3), (5, 8, 5), shell=0.6, rho=0.3, group="radius")
    ell("radial_styloid", F, fore, (27, Lr - 4, 0), (6, 10, 6), shell=0.6, rho=0.32, group="radius")
    ell("olecranon", F, fore, (-8, -7, -12), (11, 16, 10), shell=0.8, rho=0.33, group="ulna")
    ell("coronoid", F, fore, (-6, 10, 8), (7, 6, 8), shell=0.6, rho=0.33, group="ulna")
    tube("ulna", F, fore, (-8, 2, -7), (-9, Lr - 4, -5), (11, 6.0, 8), flare=(0.16, 0.1),
         cortex=(2.6, 0.9), cap=(4, 4), rho=(0.08, 0.32), bow=-2.0, section=(1.0, 0.85), group="ulna")
    ell("ulnar_styloid", F, fore, (-14, Lr + 1, -7), (2.5, 5, 2.5), shell=0.6, rho=0.33, group="ulna")

    # hand: origin at the wrist
    hand = frame_of("hand", fore, (9 * s, (Lr + 4) * s, 0),
                    _rot("x", pose.wrist_flexion) @ _rot("z", -pose.wrist_deviation))
    joint("hand", fore, (9 * s, (Lr + 4) * s, 0), hand, 20)
    K = "hand"
    tube("palm_soft", K, hand, (0, -4, 1), (-2, 96, 0), (41, 46, 44), cap=(12, 12), kind="soft",
         section=(1.0, 0.33), flare=(0.3, 0.3))
    ell("thenar", K, hand, (24, 42, 8), (17, 28, 15), kind="soft", shell=0)
    ell("hypothenar", K, hand, (-25, 48, 2), (11, 30, 13), kind="soft", shell=0)
    carpal = dict(shell=0.35, rho=0.5)
    tube("scaphoid", K, hand, (8, 5, 1), (19, 19, 5), (6.5, 5.5, 7), flare=(0.4, 0.4),
         cortex=(0.6, 0.5), cap=(6, 6), rho=(0.48, 0.5))
    ell("lunate", K, hand, (-3, 8, 0), (9.5, 8.5, 8), rot=_rot("z", 5), **carpal)
    ell("triquetrum", K, hand, (-14, 13, -3), (8.5, 7, 6.5), rot=_rot("z", -35), **carpal)
    ell("pisiform", K, hand, (-16, 15, 8), (5.5, 6, 5.5), **carpal)
    ell("trapezium", K, hand, (19, 28, 5), (9.5, 9, 7), rot=_rot("z", -25), **carpal)
    ell("trapezoid", K, hand, (9, 29, 1), (7.5, 8.5, 6), **carpal)
    tube("capitate", K, hand, (-1, 16, 0), (0, 30, 0), (8.5, 7, 7.5), flare=(0.4, 0.4),
         cortex=(0.6, 0.5), cap=(7, 3), rho=(0.48, 0.5))
    ell("hamate", K, hand, (-12, 26, -1), (9.5, 11.5, 7.5), rot=_rot("z", 15), **carpal)
    ell("hamate_hook", K, hand, (-14, 24, 9), (3, 4, 3), shell=0.4, rho=0.5)

    for ray, (base, spread, palmar, mc_len, ph_lens, rr) in _RAYS.items():
        R_mc = _rot("z", -spread * pose.spread) @ _rot("x", palmar)
        if ray == 1:
            R_mc = R_mc @ _rot("y", 75)
        fr = hand.child(np.asarray(base) * s, R_mc)
        L = mc_len * jit[2 + ray]
        tube(f"mc{ray}", K, fr, (0, 0, 0), (0, L - 0.9 * 1.5 * rr, 0), (1.45 * rr, rr, 1.5 * rr),
             flare=(0.18, 0.2), cortex=(0.36 * rr, 0.55), cap=(2, 0.9 * 1.5 * rr), rho=(0.12, 0.38))
        parent, end, prev_r = fr, L + _JOINT_GAP / 2, 1.5 * rr
        flex = pose.fingers[ray - 1]
        names = _phalanx_names(ray)
        for i, name in enumerate(names):
            slot = (0, 2)[i] if ray == 1 else i    # proximal, middle, distal
            length = ph_lens[slot] * jit[8 + 3 * ray + i]
            r_shaft = rr * (0.92, 0.8, 0.72)[slot]
            bend = flex[slot]
            R_j = _rot("x", bend) if i else _rot("z", -spread * 0.15 * pose.spread) @ _rot("x", bend)
            child = frame_of(name, parent, (0, end * s, 0), R_j)
            joint(name, parent, (0, end * s, 0), child, 1.25 * prev_r)
            distal = i == len(names) - 1
            r0, r1 = 1.5 * r_shaft, (1.25 if distal else 1.3) * r_shaft
            c0, c1 = 1.0, (0.8 if distal else 0.85) * r1
            start = _JOINT_GAP / 2 + c0
            tube(name, name, child, (0, start, 0), (0, length - c1 + _JOINT_GAP / 2, 0),
                 (r0, r_shaft, r1), flare=(0.22, 0.2 if distal else 0.22),
                 cortex=(0.38 * r_shaft, 0.5), cap=(c0, c1), rho=(0.12, 0.4))
            tip = 5.0 if distal else 0.0
            tube(f"{name}_soft", name, child, (0, 0, -0.5), (0, length + tip, -0.5),
                 (9.0 * r_shaft / 3.6 * 0.9, 8.6 * r_shaft / 3.6 * 0.9, 8.3 * r_shaft / 3.6 * 0.9),
                 cap=(6, 6 if distal else 5), kind="soft", section=(1.0, 0.85))
            if ray == 1 and i == 0:
                for sx in (-3.5, 3.5):
                    ell(f"sesamoid{'lr'[sx > 0]}", name, child, (sx, 1.5, 5.5), (2.6, 3.0, 2.6),
                        shell=0.6, rho=0.4)
            parent, end, prev_r = child, length + _JOINT_GAP, r1
    return _Model(prims, bones, joints)


# -- study types: views, poses, regions of interest, where findings go ------------------------------

#: the region each study type frames: (primitive name, tau from, tau to); ellipsoids take 0, 1
def _roi(study_type: str, finger: int) -> tuple[tuple[str, float, float], ...]:
    carpus = ("scaphoid", "lunate", "triquetrum", "trapezium", "capitate", "hamate")
    if study_type == "SHOULDER":
        return (("humerus", 0.0, 0.2), ("head", 0, 1), ("greater_tuberosity", 0, 1), ("glenoid", 0, 1),
                ("acromion", 0.3, 1.0), ("clavicle", 0.55, 1.0), ("coracoid", 0, 1))
    if study_type == "HUMERUS":
        return (("humerus", 0.0, 1.0), ("head", 0, 1), ("glenoid", 0, 1), ("trochlea", 0, 1),
                ("medial_epicondyle", 0, 1), ("lateral_epicondyle", 0, 1))
    if study_type == "ELBOW":
        return (("humerus", 0.78, 1.0), ("radius", 0.0, 0.2), ("ulna", 0.0, 0.2), ("olecranon", 0, 1),
                ("medial_epicondyle", 0, 1), ("lateral_epicondyle", 0, 1), ("radial_head", 0, 1))
    if study_type == "FOREARM":
        return (("radius", 0.0, 1.0), ("ulna", 0.0, 1.0), ("radial_head", 0, 1), ("olecranon", 0, 1),
                ("radial_styloid", 0, 1), ("ulnar_styloid", 0, 1))
    if study_type == "WRIST":
        return (("radius", 0.86, 1.0), ("ulna", 0.88, 1.0), ("radial_styloid", 0, 1),
                *((c, 0, 1) for c in carpus), *((f"mc{k}", 0.0, 0.3) for k in range(1, 6)))
    if study_type == "HAND":
        return (("radius", 0.97, 1.0), ("ulna", 0.97, 1.0), *((c, 0, 1) for c in carpus),
                *((f"mc{k}", 0.0, 1.0) for k in range(1, 6)),
                *((p, 0.0, 1.0) for k in range(1, 6) for p in _phalanx_names(k)))
    if study_type == "FINGER":
        return ((f"mc{finger}", 0.55, 1.0), *((p, 0.0, 1.0) for p in _phalanx_names(finger)))
    raise ValueError(f"unknown study type {study_type!r}")


#: the bone whose direction is turned to point down the image (before the in-plane jitter)
def _axis_bone(study_type: str, finger: int) -> str:
    return {"SHOULDER": "humerus", "HUMERUS": "humerus", "ELBOW": "humerus", "FOREARM": "radius",
            "WRIST": "radius", "HAND": "mc3", "FINGER": f"p{finger}1"}[study_type]


def _targets(kind: str, study_type: str, finger: int) -> list[tuple[str, float, float, float]]:
    """Where a finding of ``kind`` may go in ``study_type``: (target, tau from, tau to, weight)."""
    own = [(p, 0.2, 0.8, 1.0) for p in _phalanx_names(finger)]
    # a whole hand at 224 px leaves a middle phalanx a few pixels wide: HAND studies carry their
    # findings on the metacarpals and proximal phalanges (FINGER studies show the small ones)
    hand = [(f"mc{k}", 0.2, 0.85, 1.5) for k in range(1, 6)] + [(f"p{k}1", 0.2, 0.8, 1.0) for k in range(1, 6)]
    if kind == "dislocation":
        return {
            "SHOULDER": [("humerus", 0, 0, 1.0)], "HUMERUS": [("humerus", 0, 0, 1.0)],
            "ELBOW": [("forearm", 0, 0, 1.0)], "WRIST": [("hand", 0, 0, 1.0)], "FOREARM": [],
            "HAND": [(f"p{k}1", 0, 0, 1.0) for k in range(1, 6)],  # at the MCP joint
            "FINGER": [(p, 0, 0, 1.0) for p in _phalanx_names(finger)],
        }[study_type]
    if kind == "fracture":
        return {
            "SHOULDER": [("humerus", 0.03, 0.12, 2.0), ("clavicle", 0.6, 0.85, 1.0)],
            "HUMERUS": [("humerus", 0.1, 0.85, 1.0)],
            "ELBOW": [("humerus", 0.82, 0.9, 1.0), ("radius", 0.0, 0.07, 1.0), ("ulna", 0.02, 0.12, 1.0)],
            "FOREARM": [("radius", 0.2, 0.85, 1.0), ("ulna", 0.2, 0.85, 1.0)],
            "WRIST": [("radius", 0.87, 0.95, 3.0), ("ulna", 0.9, 0.96, 0.5), ("scaphoid", 0.35, 0.65, 2.0)],
            "HAND": hand,
            "FINGER": [(p, 0.15, 0.85, 1.0) for p in _phalanx_names(finger)],
        }[study_type]
    if kind in ("lytic", "sclerotic"):
        return {
            "SHOULDER": [("humerus", 0.06, 0.18, 1.0), ("clavicle", 0.6, 0.85, 0.5)],
            "HUMERUS": [("humerus", 0.1, 0.88, 1.0)],
            "ELBOW": [("humerus", 0.82, 0.9, 1.0), ("radius", 0.06, 0.16, 1.0), ("ulna", 0.08, 0.18, 1.0)],
            "FOREARM": [("radius", 0.12, 0.88, 1.0), ("ulna", 0.12, 0.88, 1.0)],
            "WRIST": [("radius", 0.8, 0.92, 2.0), ("ulna", 0.84, 0.92, 1.0)],
            "HAND": hand,
            "FINGER": own[:2],
        }[study_type]
    if kind == "hardware":
        return {
            "SHOULDER": [("humerus", 0.05, 0.25, 2.0), ("clavicle", 0.55, 0.8, 1.0)],
            "HUMERUS": [("humerus", 0.2, 0.75, 1.0)],
            "ELBOW": [("humerus", 0.76, 0.86, 1.0), ("ulna", 0.03, 0.1, 1.0)],
            "FOREARM": [("radius", 0.3, 0.75, 1.0), ("ulna", 0.3, 0.75, 1.0)],
            "WRIST": [("radius", 0.84, 0.9, 2.0), ("scaphoid", 0.5, 0.5, 1.0)],
            "HAND": hand,
            "FINGER": own,
        }[study_type]
    raise ValueError(f"unknown finding {kind!r} (one of {', '.join(FINDINGS)})")


def kinds_for(study_type: str) -> tuple[str, ...]:
    """The finding kinds a study type can carry (FOREARM has no dislocation)."""
    return tuple(k for k in FINDINGS if _targets(k, study_type, 2))


_KIND_WEIGHTS = {"fracture": 0.36, "hardware": 0.2, "lytic": 0.14, "sclerotic": 0.12, "dislocation": 0.18}


def draw_subject(study_type: str, rng: np.random.Generator) -> Subject:
    """A random patient: size, build, bone quality, side and (for FINGER) the finger."""
    return Subject(
        side="L" if rng.random() < 0.5 else "R",
        scale=float(rng.uniform(0.86, 1.12)),
        soft=float(rng.uniform(0.8, 1.35)),
        cortex=float(rng.uniform(0.7, 1.15)),
        density=float(rng.uniform(0.75, 1.2)),
        finger=int(rng.choice([1, 2, 3, 4, 5], p=[0.24, 0.2, 0.18, 0.16, 0.22])),
        seed=int(rng.integers(0, 2**31)),
    )


def draw_pose(study_type: str, view: str, subject: Subject, rng: np.random.Generator) -> Pose:
    """How the patient is positioned for ``view``; every draw is made whatever the view."""
    u = rng.uniform
    j = [float(v) for v in rng.uniform(-1, 1, size=16)]
    fingers = tuple((u(0, 10), u(0, 12), u(0, 8)) for _ in range(5))
    base = dict(abduction=6 + 5 * j[0], humeral_rotation=10 + 12 * j[1], elbow_flexion=4 + 4 * j[2],
                carrying=10 + 3 * j[3], wrist_flexion=5 * j[4], wrist_deviation=5 * j[5],
                fingers=fingers, spread=1 + 0.2 * j[6], phi=7 * j[7])
    lateral = dict(elbow_flexion=88 + 6 * j[8], phi=90 + 7 * j[9])
    oblique_phi = 42 + 8 * j[10]
    if study_type == "SHOULDER":
        if view == "AP":
            base.update(humeral_rotation=28 + 12 * j[1])
        elif view == "AP_INT":
            base.update(humeral_rotation=-58 + 12 * j[1], elbow_flexion=75 + 10 * j[2])
        else:  # scapular Y: the scapular body seen edge-on
            base.update(phi=-60 + 7 * j[7], humeral_rotation=5 * j[1])
    elif study_type == "HUMERUS":
        if view == "LAT":
            base.update(lateral, humeral_rotation=-10 + 10 * j[1])
    elif study_type in ("ELBOW", "FOREARM", "WRIST", "HAND"):
        if view == "LAT":
            base.update(lateral)
            if study_type == "HAND":
                base.update(fingers=tuple((u(5, 20), u(5, 25), u(0, 15)) for _ in range(5)))
        elif view == "OBL":
            base.update(phi=oblique_phi)
            if study_type == "HAND":
                base.update(fingers=tuple((u(5, 18), u(5, 20), u(0, 12)) for _ in range(5)))
    elif study_type == "FINGER":
        f = subject.finger
        if view == "LAT":
            base.update(lateral)
            curled = tuple((u(60, 85), u(70, 95), u(20, 45)) if k + 1 != f else (u(0, 6), u(0, 8), u(0, 6))
                           for k in range(5))
            base.update(fingers=curled)
        elif view == "OBL":
            base.update(phi=oblique_phi)
        if f == 1:  # the thumb turns 75 degrees out of the hand's plane
            base.update(phi=base["phi"] - 75)
    return Pose(**base)


def draw_finding(kind: str, study_type: str, subject: Subject, rng: np.random.Generator) -> Finding:
    """A random finding of ``kind`` on a bone (or joint) that ``study_type`` shows."""
    targets = _targets(kind, study_type, subject.finger)
    if not targets:
        raise ValueError(f"a {study_type} study cannot show a {kind}")
    w = np.array([t[3] for t in targets], dtype=float)
    name, t0, t1, _ = targets[int(rng.choice(len(targets), p=w / w.sum()))]
    tau = float(rng.uniform(t0, t1))
    u = rng.uniform
    v = [float(x) for x in rng.uniform(0, 1, size=12)]  # a fixed number of draws per finding
    if kind == "fracture":
        displaced = v[0] < 0.75
        params = dict(obliquity=55 * v[1] ** 1.5, tilt_dir=360 * v[2], gap=0.9 + 1.1 * v[3],
                      disp=(0.5 + 0.8 * v[4]) if displaced else 0.0, disp_dir=360 * v[5],
                      angulation=(6 + 18 * v[6]) if displaced and v[7] < 0.7 else 0.0,
                      ang_dir=360 * v[8], shortening=0.5 * v[9] if displaced else 0.0,
                      jag=0.08 + 0.25 * v[10], phase=6.283 * v[11])
        return Finding(kind, name, tau, "", tuple(params.items()))
    if kind == "lytic":
        params = dict(offset=0.35 * v[0], off_dir=360 * v[1], a_long=1.2 + 1.4 * v[2],
                      a_cross=0.6 + 0.3 * v[3], strength=0.85 + 0.13 * v[4],
                      rim=float(v[5] < 0.45), cortex_loss=0.5 + 0.35 * v[6])
        return Finding(kind, name, tau, "", tuple(params.items()))
    if kind == "sclerotic":
        params = dict(lobes=float(1 + int(v[0] * 3)), radius=0.5 + 0.25 * v[1], spread=0.2 + 0.4 * v[2],
                      off_dir=360 * v[3], strength=0.8 + 0.5 * v[4], seed=float(int(v[5] * 1e6)))
        return Finding(kind, name, tau, "", tuple(params.items()))
    if kind == "hardware":
        if name == "scaphoid":
            style = "screw"
        elif name.startswith("p") or (name.startswith("mc") and v[0] < 0.5) or (name == "ulna" and tau < 0.15):
            style = "kwire"
        elif name in ("humerus", "radius", "ulna") and study_type in ("HUMERUS", "FOREARM") and v[0] < 0.35:
            style = "nail"
        else:
            style = "plate"
        params = dict(length=0.2 + 0.2 * v[1], dir=360 * v[2] if style != "plate" else 90 * (v[2] - 0.5),
                      screws=float(3 + int(v[3] * 4)), wires=float(2 + int(v[4] * 2)), angle=30 + 30 * v[5],
                      spin=360 * v[6], skip=float(int(v[7] * 6)))
        return Finding(kind, name, tau, style, tuple(params.items()))
    # dislocation: a shift in the parent frame (in multiples of the joint radius) and a twist
    if name == "humerus":    # anterior-inferior (subcoracoid), now and then posterior
        shift = (-u(0.95, 1.35), u(0.7, 1.15), u(0.6, 1.0)) if v[0] < 0.85 else (-u(0.1, 0.3), u(0.1, 0.3), -u(1.1, 1.4))
    elif name == "forearm":  # posterior (and proximal) elbow dislocation
        shift = (u(-0.35, 0.35), -u(0.45, 0.9), -u(0.8, 1.2))
    elif name == "hand":     # dorsal, proximal
        shift = (u(-0.35, 0.35), -u(0.25, 0.5), -u(0.7, 1.1))
    else:                    # an interphalangeal or metacarpophalangeal joint
        shift = (u(0.6, 1.1) * (1 if v[1] < 0.5 else -1), -u(0.2, 0.6), -u(0.7, 1.3))
    params = dict(dx=shift[0], dy=shift[1], dz=shift[2], flex=u(-25, 25), twist=u(-15, 15))
    return Finding(kind, name, 0.0, "", tuple(params.items()))


def draw_findings(study_type: str, subject: Subject, rng: np.random.Generator) -> tuple[Finding, ...]:
    """The findings of an abnormal study: one, sometimes two, on different bones."""
    kinds = kinds_for(study_type)
    w = np.array([_KIND_WEIGHTS[k] for k in kinds])
    count = 2 if rng.random() < 0.2 else 1
    out: list[Finding] = []
    for _ in range(count):
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        f = draw_finding(kind, study_type, subject, rng)
        if any(o.target == f.target or "dislocation" in (o.kind, f.kind) for o in out):
            continue  # one finding per bone, and a dislocation alone
        out.append(f)
    return tuple(out)


# -- applying findings to the model ---------------------------------------------------------------


def _moves(findings: Sequence[Finding], subject: Subject) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Dislocations as segment moves for :func:`_build`."""
    radius = {"humerus": 23.0, "forearm": 24.0, "hand": 20.0}
    out = {}
    for f in findings:
        if f.kind != "dislocation":
            continue
        r = radius.get(f.target, 6.0) * subject.scale
        shift = np.array([f.p("dx"), f.p("dy"), f.p("dz")]) * r
        out[f.target] = (shift, _rot("x", f.p("flex")) @ _rot("z", f.p("twist")))
    return out


def _perp(t: _Tube, deg: float) -> np.ndarray:
    a = math.radians(deg)
    return math.cos(a) * t.e_a + math.sin(a) * t.e_b


def _metal(name: str, fid: int, p0: np.ndarray, p1: np.ndarray, r: float, *, section=(1.0, 1.0),
           e_a: np.ndarray | None = None, cap=(0.0, 0.0), thread=0.0) -> _Tube:
    axis = _unit(p1 - p0)
    e = e_a if e_a is not None else (np.array([1.0, 0, 0]) if abs(axis[0]) < 0.9 else np.array([0, 1.0, 0]))
    e_a = _unit(e - axis * float(e @ axis))
    return _Tube(name, "metal", p0, p1, (r, r, r), (0.0, 0.0), (0.0, 0.0), cap, (0.0, 0.0), 0.0,
                 section, "metal", e_a, np.cross(axis, e_a), thread, fid)


def _hardware(f: Finding, fid: int, bone: _Tube, scale: float) -> list[_Tube]:
    out: list[_Tube] = []
    axis = bone.axis
    small = bone.r[1] < 5.5 * scale
    if f.style == "screw":   # a headless compression screw along the bone (scaphoid)
        out.append(_metal("screw", fid, bone.point_at(0.05), bone.point_at(0.95), 1.3 * scale,
                          cap=(1.0, 1.0), thread=1.0 * scale))
        return out
    if f.style == "kwire":
        n = int(f.p("wires", 2))
        for i in range(n):
            tau = min(max(f.tau + (i - (n - 1) / 2) * 0.12, 0.05), 0.95)
            d = _perp(bone, f.p("spin") + 70 * i)
            angle = f.p("angle") + 12 * i
            direction = _unit(math.cos(math.radians(angle)) * axis + math.sin(math.radians(angle)) * d)
            reach = bone.radius_at(tau) * 2.2 + 8 * scale
            c = bone.point_at(tau)
            if bone.name == "ulna":  # tension band: wires along the olecranon
                direction = _unit(axis + 0.12 * d)
                c = bone.point_at(0.0) + (i - 0.5) * 4 * scale * bone.e_a
                out.append(_metal(f"kwire{i}", fid, c - 6 * scale * direction, c + 45 * scale * direction,
                                  0.8 * scale, cap=(0.5, 0.5)))
                continue
            out.append(_metal(f"kwire{i}", fid, c - reach * direction, c + reach * direction,
                              0.6 * scale if small else 0.8 * scale, cap=(0.4, 0.4)))
        return out
    if f.style == "nail":
        r = min(0.5 * bone.r[1], 5.0 * scale)
        a, b = (0.03, 0.85) if f.p("dir") < 180 else (0.15, 0.97)
        out.append(_metal("nail", fid, bone.point_at(a), bone.point_at(b), r, cap=(r, 2 * r)))
        for i, tau in enumerate((a + 0.04, b - 0.05)):
            c, d = bone.point_at(tau), _perp(bone, f.p("spin"))
            reach = bone.radius_at(tau) + 3 * scale
            out.append(_metal(f"lock{i}", fid, c - reach * d, c + reach * d, 2.2 * scale, thread=1.2 * scale))
        return out
    # plate and screws on one side of the bone
    half = f.p("length") / 2 * (1.6 if small else 1.0)
    t0, t1 = max(f.tau - half, 0.02), min(f.tau + half, 0.98)
    e = _perp(bone, f.p("dir"))
    e_w = np.cross(bone.axis, e)
    th = (1.2 if small else 2.2) * scale
    width = (3.2 if small else 5.5) * scale
    taus = np.linspace(t0, t1, 5)
    pts = [bone.point_at(t) + (bone.radius_at(t) + th / 2) * e for t in taus]
    for i in range(4):
        out.append(_metal(f"plate{i}", fid, pts[i], pts[i + 1], 1.0, section=(width, th / 2),
                          e_a=e_w, cap=(0.0, 0.0) if 0 < i < 3 else ((width, 0.0) if i == 0 else (0.0, width))))
    n = int(f.p("screws", 4))
    screw_r = (0.9 if small else 1.75) * scale
    for i, tau in enumerate(np.linspace(t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0), n)):
        if n > 3 and i == int(f.p("skip")) % n and 0 < i < n - 1:
            continue  # an empty hole over the fracture
        c, rr = bone.point_at(float(tau)), bone.radius_at(float(tau))
        top = c + (rr + th) * e
        out.append(_metal(f"screw{i}", fid, top, c - (rr + 1.5 * scale) * e, screw_r, thread=1.1 * scale,
                          cap=(0.0, screw_r)))
        out.append(_metal(f"head{i}", fid, top + 1.8 * scale * e, top - 0.3 * scale * e, 1.6 * screw_r))
    return out


def _apply(model: _Model, findings: Sequence[Finding], scale: float) -> None:
    """Fractures, lesions and hardware onto the model's bones (dislocations are in _build)."""
    for fid, f in enumerate(findings):
        if f.kind == "dislocation":
            continue
        bone = model.bones.get(f.target)
        if not isinstance(bone, _Tube):
            raise ValueError(f"{f.kind} on {f.target!r}: not a tubular bone of the model")
        R = bone.radius_at(f.tau)
        if f.kind == "hardware":
            model.prims.extend(_hardware(f, fid, bone, scale))
        elif f.kind == "lytic":
            c = bone.point_at(f.tau) + f.p("offset") * R * _perp(bone, f.p("off_dir"))
            bone.lesions.append(("lytic", fid, c, f.p("a_long") * bone.r[1], f.p("a_cross") * R, f))
        elif f.kind == "sclerotic":
            rng = np.random.default_rng(int(f.p("seed")))
            lobes = []
            for _ in range(int(f.p("lobes", 1))):
                d = _perp(bone, f.p("off_dir") + rng.uniform(-90, 90))
                c = (bone.point_at(f.tau) + rng.uniform(-1, 1) * f.p("spread") * R * 1.5 * bone.axis
                     + rng.uniform(0, 0.3) * R * d)
                lobes.append((c, f.p("radius") * R * rng.uniform(0.7, 1.1)))
            bone.lesions.append(("sclerotic", fid, lobes, f.p("strength") * 4.0 * bone.cortex[0], f))
        elif f.kind == "fracture":
            c = bone.point_at(f.tau)
            tilt = math.radians(f.p("obliquity"))
            normal = _unit(math.cos(tilt) * bone.axis + math.sin(tilt) * _perp(bone, f.p("tilt_dir")))
            jag = (f.p("jag") * scale, 3.0 * scale, f.p("phase"))
            gap = f.p("gap") * scale
            rot_axis = np.cross(bone.axis, _perp(bone, f.p("ang_dir")))
            Rm = _rot_about(rot_axis, f.p("angulation")) if f.p("angulation") else np.eye(3)
            shift = f.p("disp") * R * _perp(bone, f.p("disp_dir")) - f.p("shortening") * R * bone.axis
            distal = bone.moved(Rm, c, shift)
            info = (fid, shift, _unit(rot_axis), f.p("angulation"))
            bone.clip = (c, normal, gap, -1, jag, *info)
            distal.clip = (c + shift, Rm @ normal, gap, +1, jag, *info)
            distal.name = bone.name + "_distal"
            model.prims.insert(model.prims.index(bone) + 1, distal)
        else:
            raise ValueError(f"unknown finding {f.kind!r}")


# -- camera --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """World (mm) -> pixels: rotation phi about the limb, flip, in-plane rotation, scale, offset."""

    R: np.ndarray      # 3x3 world -> camera
    A: np.ndarray      # 2x2 camera xy -> pixels (k * rotation * flip)
    o: np.ndarray      # pixel offset
    k: float           # pixels per mm
    shape: tuple[int, int]

    def pts(self, P: np.ndarray) -> np.ndarray:
        Q = np.atleast_2d(P) @ self.R.T
        return np.column_stack([Q[:, :2] @ self.A.T + self.o, Q[:, 2] * self.k])

    def vec(self, V: np.ndarray) -> np.ndarray:
        Q = np.atleast_2d(V) @ self.R.T
        return np.column_stack([Q[:, :2] @ self.A.T, Q[:, 2] * self.k])


def _roi_points(model: _Model, roi: Sequence[tuple[str, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    pts, rad = [], []
    for name, t0, t1 in roi:
        p = model.bones[name]
        if isinstance(p, _Tube):
            for t in np.linspace(t0, t1, 4):
                pts.append(p.point_at(float(t)))
                rad.append(p.radius_at(float(t)) * max(p.section))
            for t, cap, sign in ((0.0, p.cap[0], -1), (1.0, p.cap[1], 1)):
                if t0 <= t <= t1 and cap:
                    pts.append(p.point_at(t) + sign * cap * p.axis)
                    rad.append(0.0)
        else:
            pts.append(p.c)
            rad.append(float(max(p.axes)))
    return np.array(pts), np.array(rad)


def _fit_camera(model: _Model, study_type: str, subject: Subject, pose: Pose, size: int,
                rng: np.random.Generator) -> _Camera:
    """Frame the study type's region: long side ``size``, the axis bone pointing down (jittered)."""
    u = [float(x) for x in rng.uniform(0, 1, size=8)]
    R = _rot("y", pose.phi)
    flip = np.diag([-1.0 if subject.side == "R" else 1.0, 1.0])  # a right arm's lateral side on the left
    bone = model.bones[_axis_bone(study_type, subject.finger)]
    d = (flip @ (R @ (bone.p1 - bone.p0))[:2])
    theta = math.atan2(d[0], d[1])  # rotating by theta turns d to +y
    theta += math.radians(22 * (u[0] - 0.5))
    if u[1] < 0.1 and study_type not in ("SHOULDER",):
        theta += math.pi / 2 * (1 if u[2] < 0.5 else -1)   # shown across the image
    c, s_ = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s_], [s_, c]])
    P, rad = _roi_points(model, _roi(study_type, subject.finger))
    xy = (P @ R.T)[:, :2] @ (rot @ flip).T
    lo = (xy - rad[:, None]).min(axis=0)
    hi = (xy + rad[:, None]).max(axis=0)
    w, h = hi - lo
    aspect = (min(w, h) / max(w, h)) * (1.05 + 0.3 * u[3])
    short = int(round(size * min(max(aspect, 0.55), 1.0)))
    W, Hh = (short, size) if h >= w else (size, short)
    k = min(W / w, Hh / h) * (0.8 + 0.14 * u[4])
    A = k * (rot @ flip)
    centre = (lo + hi) / 2
    slack = np.array([W - w * k, Hh - h * k])
    o = np.array([W / 2, Hh / 2]) + (np.array([u[5], u[6]]) - 0.5) * 0.8 * slack - k * centre
    return _Camera(R, A, o, k, (Hh, W))


# -- rasterising ---------------------------------------------------------------------------------


class _Canvas:
    """Path lengths (mm, weighted by density) per pixel, by material, and each finding's pixels."""

    def __init__(self, shape: tuple[int, int], tex: np.ndarray):
        self.shape = shape
        self.tex = tex
        z = lambda: np.zeros(shape, np.float32)  # noqa: E731
        self.soft, self.air, self.bone, self.scl, self.metal, self.void = z(), z(), z(), z(), z(), z()
        self.groups: dict[str, np.ndarray] = {}
        self.extent: dict[int, list[int]] = {}

    def add_bone(self, group: str, win: tuple[int, int, int, int], cort: np.ndarray, med: np.ndarray) -> None:
        """Cortex plus textured medulla; the parts of one bone (a group) combine as their maximum."""
        y0, y1, x0, x1 = win
        total = (cort + med * self.tex[y0:y1, x0:x1]).astype(np.float32)
        if not group:
            self.bone[y0:y1, x0:x1] += total
            return
        buf = self.groups.get(group)
        if buf is None:
            buf = self.groups[group] = np.zeros(self.shape, np.float32)
        np.maximum(buf[y0:y1, x0:x1], total, out=buf[y0:y1, x0:x1])

    def window(self, xs: Sequence[float], ys: Sequence[float], pad: float):
        H, W = self.shape
        x0, x1 = max(int(math.floor(min(xs) - pad)), 0), min(int(math.ceil(max(xs) + pad)) + 1, W)
        y0, y1 = max(int(math.floor(min(ys) - pad)), 0), min(int(math.ceil(max(ys) + pad)) + 1, H)
        if x0 >= x1 or y0 >= y1:
            return None
        Y, X = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return (y0, y1, x0, x1), X, Y

    def mark(self, fid: int, win: tuple[int, int, int, int], mask: np.ndarray) -> None:
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return
        y0, _, x0, _ = win
        e = self.extent.setdefault(fid, [10**9, 10**9, -1, -1, 0])
        e[0], e[1] = min(e[0], x0 + int(xs.min())), min(e[1], y0 + int(ys.min()))
        e[2], e[3] = max(e[2], x0 + int(xs.max())), max(e[3], y0 + int(ys.max()))
        e[4] += int(ys.size)


def _draw_tube(cv: _Canvas, t: _Tube, cam: _Camera) -> None:
    k = cam.k
    P = cam.pts(np.array([t.p0, t.p1]))
    a3 = P[1] - P[0]
    L3 = float(np.linalg.norm(a3))
    L = float(np.linalg.norm(a3[:2]))
    if L < 0.5:
        u = np.array([0.0, 1.0])
        L = 0.5
    else:
        u = a3[:2] / L
    n = np.array([-u[1], u[0]])
    fore = L / max(L3, 1e-6)                # foreshortening
    obliq = max(fore, 0.3)
    n3 = np.array([n[0], n[1], 0.0])
    ea, eb = cam.vec(t.e_a)[0] / k, cam.vec(t.e_b)[0] / k
    sa, sb = t.section
    w = math.hypot(sa * float(ea @ n3), sb * float(eb @ n3))
    w = max(w, 0.05)
    q = sa * sb / w
    bow = t.bow * k * float(ea @ n3)
    r0, rm, r1 = (v * k for v in t.r)
    cap0, cap1 = t.cap[0] * k * fore, t.cap[1] * k * fore
    pad = max(r0, rm, r1) * w + abs(bow) + 2
    e0, e1 = P[0, :2] - u * cap0, P[1, :2] + u * cap1
    win = cv.window((e0[0], e1[0]), (e0[1], e1[1]), pad)
    if win is None:
        return
    (y0, y1, x0, x1), X, Y = win
    dx, dy = X - P[0, 0], Y - P[0, 1]
    tt = dx * u[0] + dy * u[1]
    d = dx * n[0] + dy * n[1]
    tau = tt / L
    if bow:
        tc = np.clip(tau, 0, 1)
        d = d - bow * 4 * tc * (1 - tc)
    w0 = _smooth(1 - tau / max(t.flare[0], 1e-3))
    w1 = _smooth((tau - 1) / max(t.flare[1], 1e-3) + 1)
    R = rm + (r0 - rm) * w0 + (r1 - rm) * w1
    wend = np.maximum(w0, w1)
    before, after = tt < 0, tt > L
    if before.any():
        R = np.where(before, r0 * np.sqrt(np.clip(1 - (tt / cap0) ** 2, 0, 1)) if cap0 > 0 else 0.0, R)
    if after.any():
        R = np.where(after, r1 * np.sqrt(np.clip(1 - ((tt - L) / cap1) ** 2, 0, 1)) if cap1 > 0 else 0.0, R)
    if t.thread:
        pitch = t.thread * k * fore
        saw = np.abs(((tt / max(pitch, 0.8)) % 1.0) - 0.5) * 2
        R = R * (0.8 + 0.35 * saw) if pitch >= 0.8 else R * 0.97
    Rw = R * w
    outer = 2 * R * q * np.sqrt(np.clip(1 - np.square(d / np.maximum(Rw, 1e-3)), 0, 1))
    outer = np.where(R > 0, outer, 0.0)
    mm = 1.0 / (k * obliq)
    if t.kind != "bone":
        path = (outer * mm).astype(np.float32)
        if t.kind == "soft":
            np.maximum(cv.soft[y0:y1, x0:x1], path, out=cv.soft[y0:y1, x0:x1])
        elif t.kind == "air":
            cv.air[y0:y1, x0:x1] += path
        elif t.kind == "metal":
            cv.metal[y0:y1, x0:x1] += path
            if t.fid >= 0:
                cv.mark(t.fid, (y0, y1, x0, x1), path > 0.05)
        return
    c_mid, c_end = t.cortex[0] * k, t.cortex[1] * k
    cth = c_mid + (c_end - c_mid) * np.where(before | after, 1.0, wend)
    rin = np.clip(R - cth, 0, None)
    inner = 2 * rin * q * np.sqrt(np.clip(1 - np.square(d / np.maximum(rin * w, 1e-3)), 0, 1))
    inner = np.where(rin > 0, inner, 0.0)
    rho = t.rho[0] + (t.rho[1] - t.rho[0]) * np.where(before | after, 1.0, wend)
    cort = (outer - inner) * mm
    med = inner * rho * mm
    if t.clip is not None:
        centre, normal, gap, side, jag, fid, shift, rot_axis, angle = t.clip
        C = cam.pts(centre[None])[0, :2]
        N3 = cam.vec(normal[None])[0] / k
        vis = float(np.hypot(N3[0], N3[1]))
        N = N3[:2] / vis if vis > 1e-6 else u
        g = gap * k * float(np.clip((vis - 0.35) / 0.45, 0, 1))
        g = float(np.clip(g, 1.2, 5.0)) if g > 0 else 0.0   # a visible line, never a chasm
        sx, sy = X - C[0], Y - C[1]
        sd = sx * N[0] + sy * N[1]
        tang = -sx * N[1] + sy * N[0]
        amp, period, phase = jag[0] * k, max(jag[1] * k, 3.0), jag[2]
        sd = sd + amp * (np.sin(tang * (2 * np.pi / period) + phase)
                         + 0.6 * np.sin(tang * (2 * np.pi / (0.41 * period)) + 2.3 * phase))
        keep = np.clip(side * sd - g / 2 + 0.5, 0, 1)
        cort, med = cort * keep, med * keep
        near = (outer > 0.3) & (np.abs(sd) <= g / 2 + 2.5)
        shift_px = float(np.hypot(*cam.vec(shift[None])[0, :2]))
        turn = angle * abs(float((cam.R @ rot_axis)[2])) if angle else 0.0
        if g >= 1.0 or shift_px >= max(0.25 * rm, 1.5) or turn >= 6.0:
            cv.mark(fid, (y0, y1, x0, x1), near & (keep > 0.02) if side > 0 else near)
    for lesion in t.lesions:
        if lesion[0] == "lytic":
            _, fid, centre, a_long, a_cross, f = lesion
            C = cam.pts(centre[None])[0, :2]
            al, ac = max(a_long * k * fore, a_cross * k * 0.8), a_cross * k
            lx, ly = X - C[0], Y - C[1]
            e = np.square((lx * u[0] + ly * u[1]) / al) + np.square((lx * n[0] + ly * n[1]) / ac)
            polar = np.arctan2(lx * n[0] + ly * n[1], lx * u[0] + ly * u[1])
            phase = f.p("off_dir") * math.pi / 180
            e = e * (1 + 0.12 * np.sin(3 * polar + phase) + 0.07 * np.sin(5 * polar + 2 * phase))
            soft_edge = 1.5 / max(min(al, ac), 1.0)
            inside = _smooth((1 + soft_edge - e) / (2 * soft_edge))
            strength = f.p("strength")
            med = med * (1 - strength * inside)
            cort = cort * (1 - f.p("cortex_loss") * inside)
            if f.p("rim"):
                ring = np.exp(-np.square((np.sqrt(e) - 1) / 0.13)) * (outer > 0)
                cort = cort + 0.22 * ring * inner * mm
            cv.mark(fid, (y0, y1, x0, x1), (inside > 0.5) & (outer > 0.5))
        else:
            _, fid, lobes, peak, f = lesion   # peak: the densest path added (mm of cortex)
            add = np.zeros_like(X)
            for centre, radius in lobes:
                C = cam.pts(centre[None])[0, :2]
                rp = radius * k
                r2 = np.square(X - C[0]) + np.square(Y - C[1])
                add = np.maximum(add, np.sqrt(np.clip(1 - r2 / (rp * rp), 0, None)))
            add = peak * add * (inner > 0)
            cv.scl[y0:y1, x0:x1] += add.astype(np.float32)
            cv.mark(fid, (y0, y1, x0, x1), add > 0.25 * peak)
    cv.add_bone(t.group, (y0, y1, x0, x1), cort, med)


def _draw_ellipsoid(cv: _Canvas, e: _Ellipsoid, cam: _Camera) -> None:
    k = cam.k
    C = cam.pts(e.c[None])[0]
    V = cam.vec((e.Q * e.axes).T).T          # columns: the semi-axes in pixel space
    S = V @ V.T
    hx, hy = math.sqrt(S[0, 0]), math.sqrt(S[1, 1])
    win = cv.window((C[0] - hx, C[0] + hx), (C[1] - hy, C[1] + hy), 2)
    if win is None:
        return
    (y0, y1, x0, x1), X, Y = win
    dx, dy = X - C[0], Y - C[1]

    def chord(Vm: np.ndarray) -> np.ndarray:
        M = np.linalg.inv(Vm @ Vm.T)
        b = M[0, 2] * dx + M[1, 2] * dy
        qq = M[0, 0] * dx * dx + 2 * M[0, 1] * dx * dy + M[1, 1] * dy * dy - 1
        disc = b * b - M[2, 2] * qq
        return 2 * np.sqrt(np.clip(disc, 0, None)) / M[2, 2] / k

    outer = chord(V).astype(np.float32)
    sl = (slice(y0, y1), slice(x0, x1))
    if e.kind == "soft":
        np.maximum(cv.soft[sl], outer, out=cv.soft[sl])
        return
    if e.kind == "air":
        cv.air[sl] += outer
        return
    if e.kind == "void":
        cv.void[sl] += outer * e.rho
        return
    if e.kind == "metal":
        cv.metal[sl] += outer
        return
    scale_in = np.clip((e.axes - e.shell) / e.axes, 0.3, 1.0)
    inner = chord(V * scale_in[None, :]).astype(np.float32)
    cv.add_bone(e.group, (y0, y1, x0, x1), outer - inner, inner * e.rho)


def _draw_slab(cv: _Canvas, s: _Slab, cam: _Camera) -> None:
    P = cam.pts(s.pts)
    win = cv.window(P[:, 0], P[:, 1], 2)
    if win is None:
        return
    (y0, y1, x0, x1), _, _ = win
    normal = _unit(np.cross(s.pts[1] - s.pts[0], s.pts[3] - s.pts[0]))
    nz = abs(float((cam.R @ normal)[2]))
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    poly = np.round((P[:, :2] - [x0, y0]) * 16).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=4)
    path = mask.astype(np.float32) / 255.0 * (s.thickness / max(nz, 0.25))
    path = cv2.GaussianBlur(path, (0, 0), 1.2)
    cv.add_bone(s.group, (y0, y1, x0, x1), 0.3 * path * s.rho, 0.7 * path * s.rho)


def _texture(shape: tuple[int, int], k: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Trabecular grain (about 0.5 mm) and a slow variation for soft tissue, unit spread."""
    sigma = float(np.clip(0.5 * k, 0.8, 1.6))
    white = rng.standard_normal(shape).astype(np.float32)
    band = cv2.GaussianBlur(white, (0, 0), sigma) - cv2.GaussianBlur(white, (0, 0), 2.2 * sigma)
    band /= max(float(band.std()), 1e-6)
    fine = np.exp(-np.square(band) * 2.0)      # bright where the band-pass crosses zero: a network
    fine = (fine - fine.mean()) / max(float(fine.std()), 1e-6)
    coarse = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 4 * sigma + 3)
    coarse /= max(float(coarse.std()), 1e-6)
    slow = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(shape) / 14)
    slow /= max(float(slow.std()), 1e-6)
    return (1 + 0.16 * fine + 0.1 * coarse).clip(0.3, None), slow


def _raster(model: _Model, cam: _Camera, study_type: str, tex_rng: np.random.Generator) -> tuple[np.ndarray, _Canvas]:
    tex, slow = _texture(cam.shape, cam.k, tex_rng)
    cv = _Canvas(cam.shape, tex)
    for p in model.prims:
        if isinstance(p, _Tube):
            _draw_tube(cv, p, cam)
        elif isinstance(p, _Ellipsoid):
            _draw_ellipsoid(cv, p, cam)
        else:
            _draw_slab(cv, p, cam)
    soft = cv2.GaussianBlur(cv.soft, (0, 0), 1.0) * (1 + 0.06 * slow)
    soft = np.clip(soft - 0.85 * cv.air, 0.15 * soft, None)
    scl = cv2.GaussianBlur(cv.scl, (0, 0), 0.8)
    bone = cv.bone + scl
    for buf in cv.groups.values():
        bone += buf
    bone = np.clip(bone - cv.void, 0, None)
    A = (_MU_SOFT * _SOFT_FACTOR.get(study_type, 1.0) * soft + _MU_BONE * bone
         + _MU_METAL * cv.metal)
    return (1.0 - np.exp(-A)).astype(np.float32), cv


def _joint_box(model: _Model, target: str, cam: _Camera, normal: _Model) -> tuple[np.ndarray, float, float] | None:
    j, j0 = model.joints.get(target), normal.joints.get(target)
    if j is None or j0 is None:
        return None
    P = cam.pts(np.array([j.parent_point, j.child_point]))
    r = j.radius * cam.k
    shift = float(np.linalg.norm(P[1, :2] - cam.pts(j0.child_point[None])[0, :2]))
    return P[:, :2], r, shift


def render_view(study_type: str, rng: np.random.Generator, findings: Sequence[Finding | str] = (),
                size: int = 512, *, view: str | None = None,
                subject: Subject | None = None) -> tuple[np.ndarray, list[Box]]:
    """One view, before the realism pass: float32 H x W in [0, 1] (bone bright) and its boxes.

    The image is ``1 - exp(-A)`` of the projected attenuation A; the long side is ``size``.
    ``findings`` are :class:`Finding` objects or kinds (drawn at random, on a bone the study type
    shows). Boxes are in this image's pixels, one per finding visible in this view (a finding
    seen end-on or along its displacement may show in no box). Five seeds are drawn from ``rng``
    first, whatever the arguments, so the same ``rng`` state gives the same anatomy, pose and
    framing with or without findings.
    """
    image, boxes, _ = _render(study_type, rng, findings, size, view=view, subject=subject)
    return image, boxes


def _render(study_type: str, rng: np.random.Generator, findings: Sequence[Finding | str],
            size: int, *, view: str | None, subject: Subject | None) -> tuple[np.ndarray, list[Box], float]:
    """:func:`render_view`, and the scale (pixels per mm)."""
    if size < 64:
        raise ValueError(f"size {size} is too small (at least 64 pixels)")
    study_type = study_type.upper()
    if study_type not in STUDY_TYPES:
        raise ValueError(f"unknown study type {study_type!r} (one of {', '.join(STUDY_TYPES)})")
    seeds = [int(x) for x in rng.integers(0, 2**63 - 1, size=5)]
    subject_rng, pose_rng, finding_rng, camera_rng, tex_rng = (np.random.default_rng(x) for x in seeds)
    if subject is None:
        subject = draw_subject(study_type, subject_rng)
    views = VIEWS[study_type]
    if view is None:
        view = views[int(pose_rng.integers(len(views)))]
    elif view not in views:
        raise ValueError(f"{study_type} has no view {view!r} (one of {', '.join(views)})")
    pose = draw_pose(study_type, view, subject, pose_rng)
    resolved = [f if isinstance(f, Finding) else draw_finding(f, study_type, subject, finding_rng)
                for f in findings]
    normal = _build(subject, pose)
    cam = _fit_camera(normal, study_type, subject, pose, size, camera_rng)
    model = _build(subject, pose, _moves(resolved, subject)) if resolved else normal
    _apply(model, resolved, subject.scale)
    image, cv = _raster(model, cam, study_type, tex_rng)
    H, W = cam.shape
    boxes: list[Box] = []
    for fid, f in enumerate(resolved):
        if f.kind == "dislocation":
            jb = _joint_box(model, f.target, cam, normal)
            if jb is None:
                continue
            pts, r, shift = jb
            if shift < max(0.3 * r, 2.0):
                continue   # displaced along the beam: not seen in this view
            lo, hi = pts.min(axis=0) - r, pts.max(axis=0) + r
            x0, y0, x1, y1 = int(math.floor(lo[0])), int(math.floor(lo[1])), int(math.ceil(hi[0])), int(math.ceil(hi[1]))
        else:
            e = cv.extent.get(fid)
            if e is None or e[4] < 6:
                continue
            x0, y0, x1, y1 = e[0] - 2, e[1] - 2, e[2] + 2, e[3] + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
        if x1 - x0 >= 3 and y1 - y0 >= 3:
            boxes.append(Box(f.kind, x0, y0, x1, y1))
    return image, boxes, cam.k


# -- the realism pass ------------------------------------------------------------------------------


def _boxes_hit(boxes: Sequence[Box], x0: int, y0: int, x1: int, y1: int, margin: int = 3) -> bool:
    return any(not (x1 < b.x0 - margin or x0 > b.x1 + margin or y1 < b.y0 - margin or y0 > b.y1 + margin)
               for b in boxes)


def radiograph(image: np.ndarray, rng: np.random.Generator, *, boxes: Sequence[Box] = (),
               marker: str = "R", text: str = "") -> np.ndarray:
    """The realism pass: from :func:`render_view`'s attenuation map to a displayed radiograph.

    Exposure (contrast exponent, heel effect, scatter), detector blur, quantum (Poisson-like,
    signal-dependent) and electronic noise, log and an auto-window with a random gamma, edge
    enhancement, bright collimation borders (possibly a little rotated), a burned-in laterality
    marker and a text line. Nothing covers ``boxes``; no pixel moves, so the boxes stay valid.
    Returns float32 in [0, 1], bone bright, background dark.
    """
    H, W = image.shape
    u = [float(x) for x in rng.uniform(0, 1, size=12)]
    T = np.clip(1.0 - image.astype(np.float32), 1e-4, 1.0)
    I = np.power(T, 0.8 + 0.45 * u[0])                      # beam quality: contrast
    ang = 2 * math.pi * u[1]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    ramp = ((xx - W / 2) * math.cos(ang) + (yy - H / 2) * math.sin(ang)) / max(H, W)
    I = I * (1 + 0.16 * (u[2] - 0.5) * 2 * ramp)              # heel effect
    fog = 0.12 * u[3]
    I = (1 - fog) * I + fog * cv2.GaussianBlur(I, (0, 0), max(H, W) / 10)
    I = cv2.GaussianBlur(I, (0, 0), 0.45 + 0.6 * u[4])
    quanta = 1500 * 10 ** (1.0 * u[5])                      # photons per pixel at full exposure
    noise = rng.standard_normal((H, W)).astype(np.float32)
    I = I + np.sqrt(np.clip(I, 1e-4, None) / quanta) * cv2.GaussianBlur(noise, (0, 0), 0.5) * 1.4
    I = I + 0.001 * rng.standard_normal((H, W)).astype(np.float32)
    D = -np.log(np.clip(I, 1e-4, None))
    # auto-window: black at or above the bare background, white at the densest bone
    bare = float(np.percentile(D, 1.0))
    tissue = D[D > bare + 0.15]
    soft_lo = float(np.percentile(tissue, 5)) if tissue.size > 100 else bare
    lo = bare + (soft_lo - bare) * (0.15 + 0.75 * u[6]) - 0.03 * u[7]
    hi = float(np.percentile(D, 99.7)) + 0.2 * u[8]
    img = np.clip((D - lo) / max(hi - lo, 1e-3), 0, 1) ** (0.75 + 0.5 * u[9])
    amount = 0.7 * u[10]
    if amount > 0.05:
        img = img + amount * (img - cv2.GaussianBlur(img, (0, 0), 2 + 5 * u[11]))
    img = np.clip(img, 0, 1).astype(np.float32)
    alpha, level = overlays((H, W), rng, boxes=boxes, marker=marker, text=text)
    img = img * (1 - alpha) + level * alpha
    return np.clip(img, 0, 1).astype(np.float32)


def overlays(shape: tuple[int, int], rng: np.random.Generator, *, boxes: Sequence[Box] = (),
             marker: str = "R", text: str = "") -> tuple[np.ndarray, np.ndarray]:
    """What covers the image: collimation, the lead marker and burned-in text, none of it within
    3 pixels of a box. Returns (alpha, level): the image becomes ``image * (1 - alpha) + level *
    alpha``."""
    H, W = shape
    u = [float(x) for x in rng.uniform(0, 1, size=12)]
    alpha = np.zeros((H, W), np.float32)
    level = np.zeros((H, W), np.float32)
    # collimation: the exposed field is a (slightly rotated) rectangle holding every box
    if u[0] < 0.7:
        m = [0.0 if v < 0.3 else 0.03 + 0.1 * v for v in u[1:5]]   # left, top, right, bottom
        for _ in range(6):
            field_ = np.zeros((H, W), np.uint8)
            cx, cy = W * (m[0] + 1 - m[2]) / 2, H * (m[1] + 1 - m[3]) / 2
            rect = ((cx, cy), (W * (1 - m[0] - m[2]) + 2, H * (1 - m[1] - m[3]) + 2), 3.0 * (u[5] - 0.5) * 2)
            corners = cv2.boxPoints(rect)
            cv2.fillPoly(field_, [np.round(corners * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
            if all(field_[max(b.y0 - 4, 0):b.y1 + 5, max(b.x0 - 4, 0):b.x1 + 5].all() for b in boxes):
                break
            m = [v * 0.5 for v in m]
        else:
            field_ = np.ones((H, W), np.uint8)
        if not field_.all():
            shutter = 1.0 - cv2.GaussianBlur(field_.astype(np.float32), (0, 0), 0.8 + 0.6 * u[6])
            shutter[shutter < 1e-3] = 0.0
            alpha = shutter
            level = 0.82 + 0.16 * u[7] + 0.03 * rng.standard_normal((H, W)).astype(np.float32)
    # the lead marker and a line of burned-in text, in corners clear of the boxes
    corners_order = [int(c) for c in rng.permutation(4)]
    height = int(max(H, W) * (0.045 + 0.03 * u[8]))

    def stamp(mask: np.ndarray, value: float) -> None:
        a = mask.astype(np.float32) / 255.0
        level[...] = np.where(a > 0, value, level)
        np.maximum(alpha, a, out=alpha)

    if marker:
        scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_DUPLEX, height, 2)
        thick = max(1, height // 7)
        (tw, th), _ = cv2.getTextSize(marker, cv2.FONT_HERSHEY_DUPLEX, scale, thick)
        pad = max(3, height // 4)
        for corner in corners_order:
            x = pad + 4 if corner in (0, 3) else W - tw - 2 * pad - 4
            y = pad + 4 if corner in (0, 1) else H - th - 2 * pad - 4
            if not _boxes_hit(boxes, x - 2, y - 2, x + tw + 2 * pad + 2, y + th + 2 * pad + 2):
                mask = np.zeros((H, W), np.uint8)
                cv2.putText(mask, marker, (x + pad, y + pad + th), cv2.FONT_HERSHEY_DUPLEX, scale, 255,
                            thick, cv2.LINE_AA)
                if u[9] < 0.5:
                    cv2.rectangle(mask, (x, y), (x + tw + 2 * pad, y + th + 2 * pad), 255, max(1, thick // 2))
                stamp(mask, 0.93 + 0.07 * u[10])
                corners_order.remove(corner)
                break
    if text:
        th_px = max(7, int(max(H, W) * 0.022))
        scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, th_px, 1)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        for corner in corners_order:
            x = 4 if corner in (0, 3) else W - tw - 4
            y = 4 if corner in (0, 1) else H - th - base - 4
            if x >= 0 and not _boxes_hit(boxes, x - 2, y - 2, x + tw + 2, y + th + base + 2):
                mask = np.zeros((H, W), np.uint8)
                cv2.putText(mask, text, (x, y + th), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv2.LINE_AA)
                stamp(mask, 0.85 + 0.15 * u[11])
                break
    return alpha, level


# -- studies ---------------------------------------------------------------------------------------

SPLITS: tuple[str, ...] = ("train", "valid")
BITS_STORED: tuple[int, ...] = (10, 12, 14, 16)
MODALITIES: tuple[str, ...] = ("CR", "DX")
PHOTOMETRICS: tuple[str, ...] = ("MONOCHROME2", "MONOCHROME1")
#: Explicit VR Little Endian, RLE Lossless, JPEG 2000 Lossless, JPEG-LS Lossless
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80",
)
_ENCODING_PLUGIN = {"1.2.840.10008.1.2.5": "pydicom", "1.2.840.10008.1.2.4.90": "pylibjpeg",
                    "1.2.840.10008.1.2.4.80": "pyjpegls"}
MURA_ROOT = "MURA-v1.1"


@dataclass(frozen=True)
class StudyPlan:
    """Everything about one study that is decided before any pixel is drawn."""

    index: int                      #: 0-based, in generation order
    study_type: str
    label: int                      #: 1 abnormal (positive), 0 normal
    split: str                      #: "train" or "valid" (by patient)
    patient: int                    #: MURA patient number
    study_number: int               #: the patient's n-th study (MURA ``study<n>_...``)
    views: tuple[str, ...]
    subject: Subject
    findings: tuple[Finding, ...]
    modality: str
    photometric: str
    bits_stored: int
    wording: tuple[int, int, int]   #: which body part, study and series wording
    entropy: tuple[str, ...]        #: the run's identity, for UIDs and random streams
    seed: int

    @property
    def mura_study(self) -> str:
        """``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive`` (no trailing slash)."""
        outcome = "positive" if self.label else "negative"
        return (f"{MURA_ROOT}/{self.split}/XR_{self.study_type}/patient{self.patient:05d}/"
                f"study{self.study_number}_{outcome}")

    def rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream, self.index])

    def uid(self, *parts: object) -> str:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=[*self.entropy, str(self.index), *map(str, parts)]))

    @property
    def study_instance_uid(self) -> str:
        return self.uid("study")


def _validate(studies: int, seed: int, abnormal_fraction: float, study_types: Sequence[str],
              valid_fraction: float, size: int = 512) -> tuple[str, ...]:
    if not isinstance(studies, int) or studies < 1:
        raise ValueError(f"studies must be a positive integer, not {studies!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    for name, value in (("abnormal_fraction", abnormal_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
    if isinstance(study_types, str):
        study_types = [t for t in study_types.split(",") if t.strip()]
    types = tuple(dict.fromkeys(t.strip().upper().removeprefix("XR_") for t in study_types))
    unknown = [t for t in types if t not in STUDY_TYPES]
    if unknown or not types:
        raise ValueError(f"unknown study type(s) {', '.join(unknown) or '(none given)'} "
                         f"(choose from {', '.join(STUDY_TYPES)})")
    if not isinstance(size, int) or not 64 <= size <= 4096:
        raise ValueError(f"size must be 64 to 4096 pixels, not {size!r}")
    return types


def plan_studies(studies: int, seed: int, *, abnormal_fraction: float = 0.5,
                 study_types: Sequence[str] = STUDY_TYPES, valid_fraction: float = 0.2,
                 size: int = 512) -> list[StudyPlan]:
    """Decide every study: type, label, patient, split, views, findings and DICOM flavour.

    Study types take turns (shuffled), exactly ``round(studies * abnormal_fraction)`` studies
    are abnormal, about one study in eight is a patient's second study of the same type, and
    ``round(patients * valid_fraction)`` patients (at least one when both splits can have one)
    are in ``valid``. Modality, photometric interpretation and bits stored rotate so that every
    block of four studies (0-3, 4-7, ...) shows every value of each, the bit depths pairing with
    other modalities block after block. Raises ValueError for bad arguments.
    """
    types = _validate(studies, seed, abnormal_fraction, study_types, valid_fraction, size)
    entropy = ("radtriage-phantoms", VERSION, str(seed), str(studies), f"{abnormal_fraction:g}",
               ",".join(types), f"{valid_fraction:g}", str(size))
    root = np.random.default_rng([seed, 0])
    cyc = [types[i % len(types)] for i in range(studies)]
    type_of = [cyc[int(i)] for i in root.permutation(studies)]
    labels = np.zeros(studies, dtype=int)
    labels[root.permutation(studies)[: int(round(studies * abnormal_fraction))]] = 1
    patients: list[tuple[str, list[int]]] = []
    patient_of: list[int] = []
    for i, t in enumerate(type_of):
        again, pick = root.random(), root.random()
        same = [p for p, (pt, _) in enumerate(patients) if pt == t]
        if same and again < 0.12:
            p = same[int(pick * len(same))]
        else:
            p = len(patients)
            patients.append((t, []))
        patients[p][1].append(i)
        patient_of.append(p)
    n_valid = int(round(len(patients) * valid_fraction))
    if 0 < valid_fraction < 1 and len(patients) >= 2:
        n_valid = min(max(n_valid, 1), len(patients) - 1)
    valid = {int(p) for p in root.permutation(len(patients))[:n_valid]}
    train_ids = [p for p in range(len(patients)) if p not in valid]
    valid_ids = [p for p in range(len(patients)) if p in valid]
    number = {p: n + 1 for n, p in enumerate(train_ids + valid_ids)}   # valid numbered after train
    offsets = [int(x) for x in root.integers(0, 4, size=3)]
    plans = []
    for i, t in enumerate(type_of):
        p = patient_of[i]
        subject = draw_subject(t, np.random.default_rng([seed, 5, p]))
        rng = np.random.default_rng([seed, 1, i])
        counts = np.array(_VIEW_COUNTS[t])
        n_views = 1 + int(rng.choice(4, p=counts / counts.sum()))
        views = tuple(VIEWS[t][v % len(VIEWS[t])] for v in range(n_views))
        findings = draw_findings(t, subject, rng) if labels[i] else ()
        wording = tuple(int(x) for x in rng.integers(0, 1 << 16, size=3))
        plans.append(StudyPlan(
            index=i, study_type=t, label=int(labels[i]), split="valid" if p in valid else "train",
            patient=number[p], study_number=patients[p][1].index(i) + 1, views=views,
            subject=subject, findings=findings,
            modality=MODALITIES[(i % 4 + offsets[0]) % 2],
            photometric=PHOTOMETRICS[(i % 4 // 2 + offsets[1]) % 2],
            bits_stored=BITS_STORED[(i % 4 + i // 4 + offsets[2]) % 4],
            wording=wording, entropy=entropy, seed=seed))  # type: ignore[arg-type]
    return plans


@dataclass(frozen=True)
class RenderedView:
    view: str
    image: np.ndarray           #: after the realism pass: float32 [0, 1], bone bright
    boxes: tuple[Box, ...]
    pixel_mm: float             #: millimetres per pixel (at the detector)
    text: str                   #: the burned-in text line


_TEXTS = ("{view}", "{type} {view}", "SYN {patient:04d} {view}", "RADTRIAGE PHANTOM", "{view}  {kv} KV")


def render_study(plan: StudyPlan, size: int = 512) -> tuple[list[RenderedView], tuple[Finding, ...]]:
    """The views of a planned study, and the findings they show.

    An abnormal study whose findings happen to show in no view (seen end-on, displaced along the
    beam) gets new findings, up to five times, then hardware, which always shows; so every
    abnormal study has at least one box and every normal study none.
    """
    findings = plan.findings
    for attempt in range(7):
        drawn = []
        for v, view in enumerate(plan.views):
            rng = np.random.default_rng([plan.seed, 2, plan.index, v])
            drawn.append((view, *_render(plan.study_type, rng, findings, size, view=view,
                                         subject=plan.subject)))
        if not plan.label or any(boxes for _, _, boxes, _ in drawn):
            break
        redo = np.random.default_rng([plan.seed, 4, plan.index, attempt])
        findings = (draw_findings(plan.study_type, plan.subject, redo) if attempt < 5 else
                    (draw_finding("hardware", plan.study_type, plan.subject, redo),))
    out = []
    for v, (view, att, boxes, k) in enumerate(drawn):
        text_rng = np.random.default_rng([plan.seed, 6, plan.index, v])
        text = _TEXTS[int(text_rng.integers(len(_TEXTS)))].format(
            view=view.replace("_", " "), type=plan.study_type, patient=plan.patient,
            kv=int(text_rng.integers(50, 70)))
        marker = plan.subject.side if text_rng.random() < 0.92 else ""
        image = radiograph(att, np.random.default_rng([plan.seed, 3, plan.index, v]), boxes=boxes,
                           marker=marker, text=text)
        out.append(RenderedView(view, image, tuple(boxes), 1.0 / k, text))
    return out, findings


# -- DICOM -----------------------------------------------------------------------------------------

#: Body Part Examined values, study and series descriptions per study type: varied wording
#: (English, abbreviations, German, French, Spanish, Italian) that dicom_io.bodypart must map.
#: An ambiguous body part ("ARM") or an empty one makes the mapper read the descriptions.
_WORDING: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "ELBOW": (("ELBOW", "ELBOW", "ELLENBOGEN", "COUDE", ""),
              ("XR ELBOW {n} VIEWS", "ELLENBOGEN {de} 2 EBENEN", "Rx coude {fr}", "GOMITO {it}",
               "ELBOW {en}"),
              ("ELBOW {view}", "Ellenbogen {view}", "{view} ELBOW")),
    "FINGER": (("FINGER", "FINGER", "", "DEDO"),
               ("XR FINGER(S) {n} VIEWS", "FINGER {de}", "Rx doigt {fr}", "DEDO {es}", "FINGERS {en}"),
               ("FINGER {view}", "{view} FINGER", "Finger {view}")),
    "FOREARM": (("FOREARM", "FOREARM", "ARM", "UNTERARM", ""),
                ("XR FOREARM {n} VIEWS", "UNTERARM {de}", "Rx avant-bras {fr}", "ANTEBRAZO {es}",
                 "RADIUS ULNA {en}"),
                ("FOREARM {view}", "Unterarm {view}", "{view} FOREARM")),
    "HAND": (("HAND", "HAND", "", "MANO"),
             ("XR HAND {n} VIEWS", "HAND {de} DP/SCHRAEG", "Rx main {fr}", "MANO {es}", "HAND {en}"),
             ("HAND {view}", "{view} HAND", "Hand {view}")),
    "HUMERUS": (("HUMERUS", "HUMERUS", "ARM", "OBERARM", ""),
                ("XR HUMERUS {n} VIEWS", "OBERARM {de}", "Rx humérus {fr}", "HUMERO {es}",
                 "UPPER ARM {en}"),
                ("HUMERUS {view}", "Oberarm {view}", "{view} HUMERUS")),
    "SHOULDER": (("SHOULDER", "SHOULDER", "SCHULTER", "", "HOMBRO"),
                 ("XR SHOULDER {n}+ VIEWS", "SCHULTER {de}", "Rx épaule {fr}", "HOMBRO {es}",
                  "SHOULDER TRAUMA {en}"),
                 ("SHOULDER {view}", "Schulter {view}", "{view} SHOULDER")),
    "WRIST": (("WRIST", "WRIST", "HANDGELENK", "", "POIGNET"),
              ("XR WRIST {n} VIEWS", "HANDGELENK {de} 2 EBENEN", "Rx poignet {fr}", "MUNECA {es}",
               "SCAPHOID SERIES {en}"),
              ("WRIST {view}", "Handgelenk {view}", "{view} WRIST")),
}
_THUMB = (("THUMB", "FINGER"), ("XR THUMB {n} VIEWS", "DAUMEN {de}", "Rx pouce {fr}"),
          ("THUMB {view}", "Daumen {view}"))
_SIDE_WORDS = {"L": dict(en="LEFT", de="LINKS", fr="gauche", es="IZQUIERDO", it="SX"),
               "R": dict(en="RIGHT", de="RECHTS", fr="droit", es="DERECHO", it="DX")}
_VIEW_POSITION = {"AP": "AP", "AP_INT": "AP", "PA": "PA", "Y": "", "OBL": ""}


def _descriptions(plan: StudyPlan, view: str) -> tuple[str, str, str]:
    """(Body Part Examined, Study Description, Series Description) for one view."""
    parts, studies, series = _WORDING[plan.study_type]
    if plan.study_type == "FINGER" and plan.subject.finger == 1:
        parts, studies, series = _THUMB
    a, b, c = plan.wording
    side = _SIDE_WORDS[plan.subject.side]
    study = studies[b % len(studies)].format(n=len(plan.views), **side)
    return parts[a % len(parts)], study, series[c % len(series)].format(view=view.replace("_", " "))


def _dicom_dataset(plan: StudyPlan, v: int, rv: RenderedView, *, series_uid: str, series_number: int,
                   transfer_syntax: str):
    """One view as a DICOM instance (the attribute set of dicom_io.synthetic), compressed."""
    from pydicom.uid import UID

    from dicom_io.synthetic import StudySpec, make_instance

    H, W = rv.image.shape
    rng = np.random.default_rng([plan.seed, 7, plan.index, v])
    spec = StudySpec(views=len(plan.views), rows=H, columns=W, bits_stored=plan.bits_stored,
                     modality=plan.modality, photometric=plan.photometric,
                     body_part=plan.study_type, patient_name=f"PHANTOM^{plan.patient:04d}",
                     patient_id=f"PHANTOM-{plan.patient:05d}",
                     accession_number=f"PH{plan.seed % 100000:05d}{plan.index:06d}",
                     seed=plan.index, study_instance_uid=plan.study_instance_uid,
                     series_instance_uid=series_uid)
    ds = make_instance(spec, v)
    sop = plan.uid("instance", v)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    day = np.datetime64("2019-01-01") + int(np.random.default_rng([plan.seed, 8, plan.index]).integers(0, 2000))
    date = str(day).replace("-", "")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    clock = 8 * 3600 + plan.index * 97 % 36000
    ds.StudyTime = f"{clock // 3600:02d}{clock // 60 % 60:02d}{clock % 60:02d}"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = ds.StudyTime
    subject_rng = np.random.default_rng([plan.subject.seed, 9])
    ds.PatientSex = "F" if subject_rng.random() < 0.5 else "M"
    ds.PatientBirthDate = f"{int(subject_rng.integers(1935, 2008))}{int(subject_rng.integers(1, 13)):02d}15"
    body_part, study_desc, series_desc = _descriptions(plan, rv.view)
    ds.BodyPartExamined = body_part
    ds.StudyDescription = study_desc
    ds.SeriesDescription = series_desc
    ds.SeriesNumber = series_number
    ds.InstanceNumber = v + 1
    ds.Manufacturer = "radtriage phantoms"
    ds.ManufacturerModelName = "training.phantoms"
    ds.SoftwareVersions = VERSION
    if rv.view == "LAT":
        ds.ViewPosition = "LL" if plan.subject.side == "L" else "RL"
    else:
        ds.ViewPosition = _VIEW_POSITION.get(rv.view, "")
    if plan.modality == "DX":
        ds.ImageLaterality = plan.subject.side
        spacing = f"{rv.pixel_mm:.4f}"
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.PixelSpacing = [spacing, spacing]
    else:
        ds.Laterality = plan.subject.side
        ds.ImagerPixelSpacing = [f"{rv.pixel_mm:.4f}"] * 2
    ds.BurnedInAnnotation = "YES"
    # pixels: the displayed image mapped into part of the stored range; MONOCHROME1 inverted
    maxval = (1 << plan.bits_stored) - 1
    span = maxval * float(rng.uniform(0.55, 0.95))
    low = float(rng.uniform(0, maxval - span))
    values = np.clip(np.round(low + rv.image.astype(np.float64) * span), 0, maxval).astype(np.uint16)
    centre = low + span / 2
    if plan.photometric == "MONOCHROME1":
        values = (maxval - values).astype(np.uint16)
        centre = maxval - centre
    ds.PixelData = values.tobytes()
    if rng.random() < 0.7 or plan.modality == "DX":   # DX For Presentation requires a VOI
        ds.WindowCenter = f"{centre:.1f}"
        ds.WindowWidth = f"{max(span, 2.0):.1f}"
    else:   # CR without VOI: the daemon falls back to a percentile window
        del ds.WindowCenter
        del ds.WindowWidth
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    if transfer_syntax != "1.2.840.10008.1.2.1":
        ds.compress(UID(transfer_syntax), encoding_plugin=_ENCODING_PLUGIN[transfer_syntax],
                    generate_instance_uid=False)   # pydicom's default would make a random UID
    ds.LossyImageCompression = "00"
    return ds


# -- writing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What :func:`generate` wrote."""

    out: Path
    studies: int
    views: int
    positive: int
    train_studies: int
    valid_studies: int
    boxes: int
    formats: tuple[str, ...]
    seconds: float

    def __str__(self) -> str:
        return (f"{self.studies} studies ({self.positive} abnormal; {self.train_studies} train, "
                f"{self.valid_studies} valid), {self.views} views, {self.boxes} boxes, "
                f"{'+'.join(self.formats)} in {self.out} ({self.seconds:.1f} s)")


def _png_bytes(image: np.ndarray) -> bytes:
    grey = np.round(np.clip(image, 0, 1) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError("OpenCV could not encode a PNG")
    return buf.tobytes()


def _write_csv(path: Path, rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _environment() -> dict[str, str]:
    import pydicom

    return {"numpy": np.__version__, "opencv": cv2.__version__, "pydicom": pydicom.__version__}


@dataclass(frozen=True)
class _Written:
    """What one study added to the tables (rows are written by the parent, in study order)."""

    image_paths: tuple[str, ...]
    labelled: tuple[str, int]
    mura_boxes: tuple[tuple, ...]
    truth: tuple | None
    index_row: tuple
    views: int
    boxes: int


def _write_study(plan: StudyPlan, out: Path, formats: tuple[str, ...], size: int,
                 first_instance: int) -> _Written:
    """Render one study and write its files; a module-level function, so a worker process can."""
    views, findings = render_study(plan, size)
    image_paths: list[str] = []
    mura_boxes: list[tuple] = []
    if "mura" in formats:
        folder = out / plan.mura_study
        folder.mkdir(parents=True, exist_ok=True)
        for v, rv in enumerate(views, 1):
            name = f"image{v}.png"
            (folder / name).write_bytes(_png_bytes(rv.image))
            rel = f"{plan.mura_study}/{name}"
            image_paths.append(rel)
            mura_boxes.extend((rel, b.finding, b.x0, b.y0, b.x1, b.y1) for b in rv.boxes)
    study_uid = plan.study_instance_uid
    truth = None
    if "dicom" in formats:
        boxes_json = []
        one_series = plan.modality == "DX"
        for v, rv in enumerate(views):
            series_uid = plan.uid("series", 0 if one_series else v)
            ts = TRANSFER_SYNTAXES[(first_instance + v) % len(TRANSFER_SYNTAXES)]
            ds = _dicom_dataset(plan, v, rv, series_uid=series_uid,
                                series_number=1 if one_series else v + 1, transfer_syntax=ts)
            folder = out / "dicom" / study_uid / series_uid
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            boxes_json.extend(b.as_dict(str(ds.SOPInstanceUID)) for b in rv.boxes)
        truth = (study_uid, plan.label, plan.study_type, plan.split,
                 json.dumps(boxes_json, separators=(",", ":")))
    index_row = (plan.index, study_uid, plan.mura_study + "/", plan.study_type, plan.label, plan.split,
                 " ".join(v.view for v in views),
                 json.dumps([f.as_dict() for f in findings], separators=(",", ":"), sort_keys=True))
    return _Written(tuple(image_paths), (plan.mura_study + "/", plan.label), tuple(mura_boxes), truth,
                    index_row, len(views), sum(len(v.boxes) for v in views))


def _worker_init() -> None:
    cv2.setNumThreads(1)


def generate(out: Path | str, *, studies: int, seed: int, abnormal_fraction: float = 0.5,
             study_types: Sequence[str] = STUDY_TYPES, valid_fraction: float = 0.2,
             formats: Sequence[str] = FORMATS, size: int = 512,
             progress: Callable[[int, int], None] | None = None, workers: int = 1) -> Summary:
    """Write ``studies`` synthetic studies to ``out`` (which must not exist, or be empty).

    ``formats``: ``"mura"`` (``out/MURA-v1.1``: PNG and the four CSVs, ``out/mura_boxes.csv``),
    ``"dicom"`` (``out/dicom/<study>/<series>/<sop>.dcm`` and ``out/dicom/truth.csv``), or both.
    Always ``out/studies.csv`` (every study, both names, its findings) and ``out/phantoms.json``
    (version, seed, arguments). ``progress(done, total)`` is called after each study.
    ``workers`` > 1 renders studies in that many processes (0: one per CPU); the files do not
    depend on it. The same arguments give byte-identical files (with the same numpy, OpenCV and
    pydicom). Raises ValueError for bad arguments or a non-empty ``out``, OSError when writing
    fails.
    """
    started = time.perf_counter()
    out = Path(out)
    formats = tuple(dict.fromkeys(f.lower() for f in ([formats] if isinstance(formats, str) else formats)))
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"formats must be among {', '.join(FORMATS)}, not {', '.join(formats) or '(none)'}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be 0 (one per CPU) or more, not {workers!r}")
    types = _validate(studies, seed, abnormal_fraction, study_types, valid_fraction, size)
    plans = plan_studies(studies, seed, abnormal_fraction=abnormal_fraction, study_types=types,
                         valid_fraction=valid_fraction, size=size)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    first = int(np.random.default_rng([seed, 10]).integers(0, len(TRANSFER_SYNTAXES)))
    firsts = []
    for plan in plans:   # transfer syntaxes take turns across all instances
        firsts.append(first)
        first += len(plan.views)
    workers = workers or os.cpu_count() or 1
    workers = min(workers, len(plans))
    results: list[_Written] = []
    if workers <= 1:
        for done, (plan, f) in enumerate(zip(plans, firsts), 1):
            results.append(_write_study(plan, out, formats, size, f))
            if progress is not None:
                progress(done, len(plans))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")   # no fork of a process with OpenCV's threads
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = [pool.submit(_write_study, plan, out, formats, size, f) for plan, f in zip(plans, firsts)]
            for done, future in enumerate(futures, 1):
                results.append(future.result())
                if progress is not None:
                    progress(done, len(plans))
    if "mura" in formats:
        base = out / MURA_ROOT
        base.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            mine = [(r, p) for r, p in zip(results, plans) if p.split == split]
            _write_csv(base / f"{split}_image_paths.csv", sorted([i] for r, _ in mine for i in r.image_paths))
            _write_csv(base / f"{split}_labeled_studies.csv", sorted(r.labelled for r, _ in mine))
        _write_csv(out / "mura_boxes.csv", sorted(b for r in results for b in r.mura_boxes),
                   ("image_path", "finding", "x0", "y0", "x1", "y1"))
    if "dicom" in formats:
        (out / "dicom").mkdir(parents=True, exist_ok=True)
        _write_csv(out / "dicom" / "truth.csv", [r.truth for r in results],
                   ("study_instance_uid", "label", "study_type", "split", "boxes"))
    _write_csv(out / "studies.csv", [r.index_row for r in results],
               ("index", "study_instance_uid", "mura_study", "study_type", "label", "split", "views",
                "findings"))
    counts = {"studies": len(plans), "views": sum(r.views for r in results),
              "boxes": sum(r.boxes for r in results), "positive": sum(p.label for p in plans),
              "train": sum(p.split == "train" for p in plans),
              "valid": sum(p.split == "valid" for p in plans)}
    meta = {
        "generator": "training.phantoms",
        "version": VERSION,
        "seed": seed,
        "arguments": {"studies": studies, "seed": seed, "abnormal_fraction": abnormal_fraction,
                      "study_types": list(types), "valid_fraction": valid_fraction,
                      "formats": list(formats), "size": size},
        "counts": counts,
        "environment": _environment(),
    }
    (out / "phantoms.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Summary(out, len(plans), counts["views"], counts["positive"], counts["train"], counts["valid"],
                   counts["boxes"], formats, time.perf_counter() - started)


# -- command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``radtriage phantoms`` (for ``daemon/cli.py``'s sub-parser)::

        radtriage phantoms OUT --studies N --seed S [--abnormal-fraction F]
                           [--study-types WRIST,HAND] [--valid-fraction F]
                           [--format mura|dicom|both] [--size PX] [--workers N]
    """
    parser.add_argument("out", type=Path, help="output folder (created; must be empty)")
    parser.add_argument("--studies", type=int, required=True, help="number of studies")
    parser.add_argument("--seed", type=int, required=True, help="the same seed gives the same files")
    parser.add_argument("--abnormal-fraction", type=float, default=0.5,
                        help="share of abnormal studies (default 0.5)")
    parser.add_argument("--study-types", default=",".join(STUDY_TYPES),
                        help="comma-separated MURA study types (default: all seven)")
    parser.add_argument("--valid-fraction", type=float, default=0.2,
                        help="share of patients in the valid split (default 0.2)")
    parser.add_argument("--format", choices=("mura", "dicom", "both"), default="both",
                        help="MURA-v1.1 PNG layout, DICOM with truth.csv, or both (default)")
    parser.add_argument("--size", type=int, default=512, help="long side in pixels (default 512)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes rendering studies (default 0: one per CPU); same files either way")
    return parser


def phantoms_cli(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``radtriage phantoms``: the arguments of :func:`add_arguments`. 0 done, 1 could not
    write, 2 bad arguments (the message on ``err``)."""
    formats = FORMATS if args.format == "both" else (args.format,)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"  {done}/{total} studies", file=err)

    try:
        summary = generate(args.out, studies=args.studies, seed=args.seed,
                           abnormal_fraction=args.abnormal_fraction, study_types=args.study_types,
                           valid_fraction=args.valid_fraction, formats=formats, size=args.size,
                           progress=progress, workers=getattr(args, "workers", 0))
    except ValueError as exc:
        print(f"radtriage phantoms: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"radtriage phantoms: cannot write {args.out}: {exc}", file=err)
        return 1
    print(summary, file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.phantoms OUT --studies N --seed S ...`` (the same as the CLI command)."""
    import sys

    parser = add_arguments(argparse.ArgumentParser(prog="python -m training.phantoms",
                                                   description="write synthetic radiographs"))
    return phantoms_cli(parser.parse_args(argv), sys.stdout, sys.stderr)


# -- looking at them ---------------------------------------------------------------------------------


def contact_sheet(items: Sequence[tuple[np.ndarray, Sequence[Box], str]], *, columns: int = 4,
                  cell: int = 320) -> np.ndarray:
    """Views with their boxes drawn (red) and a caption, tiled: a BGR uint8 image for a PNG."""
    rows = max(1, math.ceil(len(items) / columns))
    sheet = np.zeros((rows * cell, columns * cell, 3), np.uint8)
    for i, (image, boxes, caption) in enumerate(items):
        grey = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        f = (cell - 4) / max(grey.shape)
        bgr = cv2.resize(bgr, (max(1, round(grey.shape[1] * f)), max(1, round(grey.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
        for b in boxes:
            p0 = (int(b.x0 * f), int(b.y0 * f))
            cv2.rectangle(bgr, p0, (int(b.x1 * f), int(b.y1 * f)), (0, 0, 255), 1)
            cv2.putText(bgr, b.finding, (p0[0], max(p0[1] - 3, 9)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (0, 220, 255), 1, cv2.LINE_AA)
        r, c = divmod(i, columns)
        sheet[r * cell + 2:r * cell + 2 + bgr.shape[0], c * cell + 2:c * cell + 2 + bgr.shape[1]] = bgr
        cv2.putText(sheet, caption, (c * cell + 4, r * cell + cell - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 255, 0), 1, cv2.LINE_AA)
    return sheet


if __name__ == "__main__":
    raise SystemExit(main())
