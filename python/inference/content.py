"""The content check: does a photo show people? Detection only, no decision.

It uses what ships inside the OpenCV package, so nothing is downloaded: Haar
cascades for frontal and profile faces (cv2.data.haarcascades) and the HOG
people detector with its built-in SVM. The upper-body cascade is left out: it
finds a "person" in one of the project's rendered empty rooms even at five
neighbours. The full-body one found nothing in any test photo, people included.

Every detector runs on one grey copy whose long side is DETECT_LONG_SIDE, so
the cost is bounded whatever the input size. The thresholds were tuned on the
scikit-image astronaut photo (its face and, from 512 px, its person found with
a wide margin; the profile cascade is for faces turned aside, which it is not)
and the bundled empty rooms (nothing found, even at looser thresholds than
these).
"""

from __future__ import annotations

import dataclasses
import os
import threading

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

# DETECT_LONG_SIDE is the long side, in pixels, of the grey copy detection runs on.
DETECT_LONG_SIDE = 512

# MIN_FACE_FRACTION: a face smaller than this share of the copy's short side is not
# looked for (32 px on a 768x512 copy); smaller ones are mostly false finds.
MIN_FACE_FRACTION = 1 / 16

# Haar cascades keep a find confirmed by at least this many neighbouring windows.
# The astronaut's face gets many more; 3 already finds nothing in the empty rooms.
FACE_MIN_NEIGHBORS = 4

# HOG_HIT_THRESHOLD is the SVM margin a person window must pass: the astronaut
# scores 1.0 (1.4 at half size), the empty rooms have no window even at -0.3.
HOG_HIT_THRESHOLD = 0.4

SCALE_FACTOR = 1.1

_FRONTAL = "haarcascade_frontalface_alt2.xml"
_PROFILE = "haarcascade_profileface.xml"


@dataclasses.dataclass(frozen=True)
class Detections:
    """Detections counts what each detector found in one image."""

    faces: int = 0
    profiles: int = 0
    people: int = 0

    @property
    def found(self) -> bool:
        """True when any detector found something."""
        return self.faces + self.profiles + self.people > 0


class Detector:
    """Detector holds the loaded models. detect() may be called from several job
    threads: OpenCV does not promise that one classifier object is safe to use
    from two threads at once, so calls take turns (a few hundred milliseconds on
    a CPU core, small beside a denoising run)."""

    def __init__(self) -> None:
        # cv2.data is a plain module that OpenCV's type stubs leave out.
        folder: str = cv2.data.haarcascades  # type: ignore[attr-defined]
        self._frontal = _cascade(os.path.join(folder, _FRONTAL))
        self._profile = _cascade(os.path.join(folder, _PROFILE))
        self._hog = cv2.HOGDescriptor()
        weights = np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32)
        self._hog.setSVMDetector(weights)
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> Detections:
        """Counts the faces and people in image (any PIL mode)."""
        grey = _grey(image)
        side = max(1, round(min(grey.shape) * MIN_FACE_FRACTION))
        with self._lock:
            faces = self._faces(self._frontal, grey, side)
            # The profile cascade knows faces turned one way; the mirror finds the other.
            profiles = self._faces(self._profile, grey, side)
            profiles += self._faces(self._profile, np.ascontiguousarray(grey[:, ::-1]), side)
            people = self._people(grey)
        return Detections(faces=faces, profiles=profiles, people=people)

    def _people(self, grey: npt.NDArray[np.uint8]) -> int:
        # OpenCV's HOG crashes the process (SIGSEGV) on an image smaller than
        # its window; such an image has no room for a person it could find.
        win_w, win_h = self._hog.winSize
        if grey.shape[0] < win_h or grey.shape[1] < win_w:
            return 0
        found, _ = self._hog.detectMultiScale(
            grey, hitThreshold=HOG_HIT_THRESHOLD, winStride=(8, 8), padding=(8, 8), scale=1.05
        )
        return len(found)

    @staticmethod
    def _faces(cascade: cv2.CascadeClassifier, grey: npt.NDArray[np.uint8], side: int) -> int:
        found = cascade.detectMultiScale(
            grey,
            scaleFactor=SCALE_FACTOR,
            minNeighbors=FACE_MIN_NEIGHBORS,
            minSize=(side, side),
        )
        return len(found)


_shared: Detector | None = None
_shared_lock = threading.Lock()


def detector() -> Detector:
    """Returns the process's one Detector, loading it on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Detector()
        return _shared


def _cascade(path: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load the OpenCV cascade {os.path.basename(path)}")
    return cascade


def _grey(image: Image.Image) -> npt.NDArray[np.uint8]:
    grey = image.convert("L")
    scale = DETECT_LONG_SIDE / max(grey.size)
    if scale < 1:
        size = (max(1, round(grey.size[0] * scale)), max(1, round(grey.size[1] * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    # Equalised, so that a dim or hazy photo gives the cascades the contrast they
    # were trained on.
    return np.asarray(cv2.equalizeHist(np.asarray(grey, dtype=np.uint8)), dtype=np.uint8)
