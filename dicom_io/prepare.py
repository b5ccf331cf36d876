"""Views to model input in a pool of worker processes, every failure turned into a reason.

:func:`prepare_view` is what one worker does for one stored view: check its structure and read it
once (:func:`read_view`), decide whether it is scored (modality, image type, body part:
:mod:`dicom_io.bodypart`), decode and prepare every frame (:mod:`dicom_io.pixels`). It never
raises: a view that cannot be scored comes back with its reason, which the study's report
carries ("not analysed: ...").

:class:`PreparePool` runs it in ``workers`` processes (spawned, so no lock or thread of the
daemon is inherited) so every core decodes while the model scores, and so a decoder that
crashes or runs out of memory takes down a worker, not the daemon; ``workers=1`` runs in the
caller's thread, which is what tests and the single-core case want.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.bodypart import SelectionRules, select_view
from dicom_io.errors import DicomIOError, InvalidInstance, describe
from dicom_io.geometry import ViewGeometry
from dicom_io.pixels import DecodeOptions, Preprocessing, prepare_dataset_mapped, read_dataset
from dicom_io.validate import check_instance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedView:
    """One view's model input, or why there is none."""

    #: float32 (frames, 3, size, size); None when the view is not scored
    tensor: np.ndarray | None
    #: the MURA study type the view's header names, None when unmapped or unreadable
    study_type: str | None
    #: why the view is not scored (None when it is)
    error: str | None
    #: how each frame became its tensor (:mod:`dicom_io.geometry`): maps a heatmap onto the view
    geometry: tuple[ViewGeometry, ...] = ()
    #: the first frame as displayed, its long side at most :data:`THUMBNAIL_SIZE` (uint8): what
    #: the summary image shows, so the view is not decoded twice
    thumbnail: np.ndarray | None = None

    @property
    def frames(self) -> int:
        return 0 if self.tensor is None else int(self.tensor.shape[0])


#: The long side of :attr:`PreparedView.thumbnail`, pixels.
THUMBNAIL_SIZE = 512


def thumbnail(grey: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A displayed view scaled down (never up) so its long side is at most ``size``."""
    h, w = grey.shape[:2]
    scale = size / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(grey)
    import cv2

    return cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def read_view(path: Path | str, opts: DecodeOptions, *, stop_before_pixels: bool = False,
              max_inflated: int | None = None) -> Dataset:
    """The view at ``path``, read once its structure is whole (:func:`dicom_io.validate.check_instance`,
    the receiver's check: about 0.2 ms for a 2k x 2k image, native or compressed; a deflated one
    is inflated twice more, about 5 ms per inflated MB): a file cut short or malformed is refused saying what and where (``not a readable
    DICOM file: truncated: fragment 1 of Pixel Data at offset 1176 declares 72942 bytes but only
    6229 are left in the file``), where pydicom's lenient reader would return a data set that
    lost every element after the cut, and the view would be refused for its "modality (none)".

    The pixel description (Rows, Columns, the data's length, the codestreams) is left to
    :func:`dicom_io.pixels.check_header`, which judges it after the view is selected, as before.
    ``stop_before_pixels``: the header only, for grouping files into studies before they are
    prepared (``radtriage score``, uploads), with the same verdict on a file cut short.
    ``max_inflated``: a deflated data set may inflate to at most this many bytes (None: no
    limit but ``opts.max_pixels`` on its image).

    Raises InvalidInstance (malformed, truncated), UnsupportedInstance (a transfer syntax
    radtriage does not accept), InstanceTooLarge (a deflated image of more than
    ``opts.max_pixels``, from its header, or a data set inflating past ``max_inflated``) and
    OSError.
    """
    try:
        check_instance(Path(path), pixels=False, max_inflated=max_inflated, max_pixels=opts.max_pixels)
    except InvalidInstance as exc:
        raise InvalidInstance(f"not a readable DICOM file: {exc}") from exc
    return read_dataset(path, stop_before_pixels=stop_before_pixels, limit=max_inflated)


def prepare_view(path: Path | str, prep: Preprocessing, opts: DecodeOptions,
                 rules: SelectionRules) -> PreparedView:
    """Read (:func:`read_view`), select and prepare one stored view; never raises."""
    try:
        ds = read_view(path, opts)
    except DicomIOError as exc:
        return PreparedView(None, None, str(exc))
    except OSError as exc:
        return PreparedView(None, None, f"cannot read the stored file: {exc.strerror or exc}")
    except Exception as exc:  # a parser error read_dataset does not know yet: that view's reason
        log.warning("a stored view could not be read: %s", path, exc_info=True)
        # the view's reason reaches the SR, the API and the log: a library's message may quote
        # a header value, so only its type and where it was raised (describe)
        return PreparedView(None, None, f"not a readable DICOM file: {describe(exc)}")
    study_type = None
    try:
        selection = select_view(ds, rules)
        study_type = selection.study_type
        if not selection.scored:
            return PreparedView(None, study_type, selection.reason)
        tensor, geometry, displays = prepare_dataset_mapped(ds, prep, opts)
        return PreparedView(tensor, study_type, None, tuple(geometry), thumbnail(displays[0]))
    except DicomIOError as exc:
        return PreparedView(None, study_type, str(exc))
    except MemoryError:
        return PreparedView(None, study_type, "not enough memory to decode the image")
    except Exception as exc:  # malformed attributes surface as TypeError, cv2.error, ...: that view's error
        log.warning("a view could not be prepared: %s", path, exc_info=True)
        return PreparedView(None, study_type, f"cannot prepare the pixels: {describe(exc)}")


#: How often a worker process checks that the daemon that started it is still alive, seconds.
PARENT_CHECK_S = 0.5


def watch_parent(parent: int, interval_s: float = PARENT_CHECK_S,
                 exit: Callable[[int], object] = os._exit) -> threading.Thread:
    """Exit this process as soon as ``parent`` is no longer its parent (it died, even by
    SIGKILL, and the process was handed to init): a daemon killed with ``kill -9`` must not
    leave its preparation workers running (some 270 MB).

    Not ``prctl(PR_SET_PDEATHSIG)``: Linux sends that signal when the *thread* that started
    the process ends, and the pool starts workers from whichever thread submits first (a
    scoring thread, or a web request's thread that ends soon after), so it would kill healthy
    workers. A check of ``os.getppid()`` every ``interval_s`` costs nothing and works anywhere.
    """
    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        exit(1)

    thread = threading.Thread(target=run, name="radtriage-parent-watch", daemon=True)
    thread.start()
    return thread


def _init_worker(log_setup: Callable[[], None] | None, parent: int | None = None) -> None:
    """Exit with the daemon (:func:`watch_parent`), logging as the daemon's (a spawned process
    starts with none), and one thread per worker process: the pool, not OpenCV, spreads the
    work over the cores."""
    if parent is not None:
        watch_parent(parent)
    if log_setup is not None:
        log_setup()
    import cv2

    cv2.setNumThreads(1)


def _timed_out(timeout_s: float | None) -> str:
    return f"scoring timed out: not prepared within limits.study_timeout_s ({timeout_s:g} s)"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class PreparePool:
    """Prepares views in ``workers`` processes (0: one per core; 1: in the calling thread)."""

    def __init__(self, prep: Preprocessing, opts: DecodeOptions, rules: SelectionRules,
                 workers: int = 0, *, log_setup: Callable[[], None] | None = None) -> None:
        """``log_setup``: a picklable callable each worker runs first to configure its logging."""
        self.prep, self.opts, self.rules = prep, opts, rules
        self.log_setup = log_setup
        self.workers = workers or default_workers()
        self._executor: Executor | None = None
        self._lock = threading.Lock()  # studies in flight share the pool
        #: what a worker runs for one view (a module-level function: it is pickled by name)
        self.task: Callable[..., PreparedView] = prepare_view

    def _pool(self) -> Executor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(self.log_setup, os.getpid()))
            return self._executor

    def map(self, paths: Sequence[Path | str], *, timeout_s: float | None = None) -> list[PreparedView]:
        """Every view's outcome, in order.

        ``timeout_s``: views not prepared by then come back with a "timed out" reason and the
        worker processes are stopped (a decoder that hangs cannot hold the daemon up); in the
        calling thread (``workers=1``) the views not yet started are the ones that time out.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.workers == 1:
            out = []
            for p in paths:
                if deadline is not None and time.monotonic() > deadline:
                    out.append(PreparedView(None, None, _timed_out(timeout_s)))
                else:
                    out.append(self.task(p, self.prep, self.opts, self.rules))
            return out
        try:
            futures = [self._pool().submit(self.task, p, self.prep, self.opts, self.rules)
                       for p in paths]
            out: list[PreparedView] = []
            for future in futures:
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    out.append(future.result(timeout=left))
                except FutureTimeout:  # this view and every one after it
                    log.error("preparing a study's views took longer than %s s; stopping the "
                              "preparation workers", timeout_s)
                    self.terminate()
                    out += [PreparedView(None, None, _timed_out(timeout_s))] * (len(paths) - len(out))
                    break
            return out
        except BrokenProcessPool:  # a worker died (out of memory, a codec crash): find which view
            log.error("a preparation worker died; preparing the study's views one at a time")
            self.close()
            return [self._isolated(p) for p in paths]

    def terminate(self) -> None:
        """Stop the worker processes now, whatever they are doing; new ones start on next use."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.kill()
        executor.shutdown(wait=True, cancel_futures=True)

    def _isolated(self, path: Path | str) -> PreparedView:
        try:
            return self._pool().submit(self.task, path, self.prep, self.opts, self.rules).result()
        except BrokenProcessPool:
            self.close()
            return PreparedView(None, None, "the decoder crashed on this view (its worker process died)")

    def _repeat(self, n: int) -> Iterable[list]:
        return [self.prep] * n, [self.opts] * n, [self.rules] * n

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "PreparePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
