r"""Face crops of labelled photos, detected once and cached on disk.

A photo goes through :class:`~pyg_mefl.faces.FaceDetector` and the face is cut as the model's
source frames faces (``face_crop`` of
:func:`~pyg_mefl.models.preprocessing.published_preprocessing`): ``"square"``, a square around
the box (:func:`~pyg_mefl.faces.square_face_crop`), or ``"mexca"``, the box itself with its
corners truncated to whole pixels as mexca cuts it (the model's transform then resizes it). A
photo with several faces gives its largest; a photo in which the detector finds no face has no
crop (its labels describe a face the model would not be shown), and the caller leaves it out.
Both are warned about, naming the photo.

The crops are PNG files named by the SHA-256 of the photo's bytes and of the settings (detector,
crop, margin), beside a small JSON record of what the detector found, each written atomically:
a photo is detected once, and a cache filled by an interrupted run is still valid.
"""
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from ..faces.crops import square_face_crop
from ..faces.detector import MEXCA_DETECTOR, FaceDetector, frame_tensor
from ..utils.files import write_atomically

CROP_STYLES = ("square", "mexca")
_CACHE_VERSION = 1


class FaceCropCache:
    r"""Face crops of photos, cut once and then read from ``folder``.

    Args:
        folder (str or os.PathLike): The cache folder (created when a crop is first written).
        face_crop (str): ``"square"`` or ``"mexca"`` (see the module's notes).
        margin (float): The square crop's margin (``"square"`` only).
            (default: :obj:`0.0`)
        detector (FaceDetector, optional): The detector (default: mexca's settings, made on
            the first photo not in the cache).
    """

    def __init__(self, folder, face_crop: str = "square", margin: float = 0.0,
                 detector=None):
        if face_crop not in CROP_STYLES:
            raise ValueError(f"face_crop: expected one of {CROP_STYLES}, got {face_crop!r}")
        self.folder = Path(folder)
        self.face_crop, self.margin = face_crop, float(margin)
        self._detector = detector
        self._settings = {"version": _CACHE_VERSION, "face_crop": face_crop,
                          "margin": self.margin if face_crop == "square" else None,
                          "detector": _detector_settings(detector)}

    @property
    def detector(self):
        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

    def crops(self, photos: Sequence[str],
              where: Optional[Sequence[str]] = None) -> List[Optional[str]]:
        """The paths of the face crops of ``photos`` (:obj:`None` for a photo without a face),
        cutting those not cached yet; ``where`` (e.g. ``"labels.csv, line 4"``) names each
        photo in the warnings."""
        where = where or [""] * len(photos)
        return [self.crop(photo, place) for photo, place in zip(photos, where)]

    def crop(self, photo: str, where: str) -> Optional[str]:
        """The path of the face crop of ``photo``, :obj:`None` without a face (see
        :meth:`crops`; ``where`` may be empty)."""
        key = self._key(photo)
        crop_path, record_path = self.folder / f"{key}.png", self.folder / f"{key}.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
        if record is None or (record["faces"] > 0 and not crop_path.is_file()):
            record = self._cut(photo, crop_path)
            write_atomically(record_path, lambda path: Path(path).write_text(json.dumps(record)))
        if record["faces"] != 1:
            what = ("no face found: the photo is left out" if record["faces"] == 0 else
                    f"{record['faces']} faces found: the largest is taken")
            warnings.warn(f"{where + ': ' if where else ''}{photo}: {what}", stacklevel=3)
        return str(crop_path) if record["faces"] else None

    def _key(self, photo: str) -> str:
        digest = hashlib.sha256()
        with open(photo, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(json.dumps(self._settings, sort_keys=True).encode())
        return digest.hexdigest()

    def _cut(self, photo: str, crop_path: Path) -> dict:
        from PIL import Image

        with Image.open(photo) as image:
            image = image.convert("RGB")
        found = self.detector.detect(frame_tensor(image))[0]
        self.folder.mkdir(parents=True, exist_ok=True)
        if len(found) == 0:
            return {"faces": 0, "box": None}
        box = found.boxes[0].tolist()  # MTCNN's select_largest order: the largest first
        if self.face_crop == "square":
            crop = square_face_crop(image, box, self.margin)
        else:
            x1, y1, x2, y2 = box
            crop = image.crop((int(max(x1, 0)), int(max(y1, 0)),
                               int(min(x2, image.width)), int(min(y2, image.height))))
        write_atomically(crop_path, lambda path: crop.save(path, format="PNG"))
        return {"faces": len(found), "box": box}


def _detector_settings(detector) -> dict:
    """The settings that decide a crop: the given detector's, or those of the default one
    (mexca's, without building the networks)."""
    if detector is not None:
        return detector.settings()
    return {"default": sorted(MEXCA_DETECTOR.items())}


def default_cache_folder() -> str:
    """``$XDG_CACHE_HOME/pyg_mefl/face_crops`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyg_mefl", "face_crops")
