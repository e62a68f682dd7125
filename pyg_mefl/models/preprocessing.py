"""The published evaluation preprocessing of each source (docs/math.md §10): a PIL face image to the
``[3, 224, 224]`` tensor its models read, and the same steps as plain data for files that
describe a model (model directories, exported ONNX models)."""
from typing import Dict, List, Tuple

from ..pretrained.layouts import check_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# facenet's MTCNN hands crops over as (x - 127.5) / 128 of 0-255 pixels: on ToTensor's 0-1 scale
MTCNN_MEAN, MTCNN_STD = (0.5,) * 3, (128 / 255,) * 3
IMAGE_SIZE, RESIZE = 224, 256


def published_preprocessing(source: str) -> Dict[str, object]:
    """The eval preprocessing of ``source`` as JSON-ready data, the steps that
    :func:`published_transform` applies:

    - ``resize``: torchvision ``Resize`` of the image (an int: the shorter side; a pair
      ``[height, width]``: both sides), bilinear;
    - ``center_crop``: the side of the ``CenterCrop`` after it, or :obj:`None`;
    - ``image_size``: the side of the square model input;
    - ``normalize``: the ``Normalize`` steps on ``ToTensor``'s 0-1 pixels, in order, each
      ``{"mean": [r, g, b], "std": [r, g, b]}``;
    - ``mean``, ``std``: those steps as one ``(x - mean) / std`` on 0-1 pixels (equal up to
      float round-off), for runtimes that take a single normalisation;
    - ``face_crop``: how the face pipeline cuts faces for the model by default: ``"mexca"``
      (mexca's own crops of the detector's boxes) or ``"square"`` (a square around the box,
      with a margin; see :mod:`pyg_mefl.faces.crops`).
    """
    source = check_source(source)
    if source is None:
        raise ValueError("source: expected one of the published sources, got None")
    if source == "mexca":
        resize, center_crop, steps = [IMAGE_SIZE, IMAGE_SIZE], None, [
            (MTCNN_MEAN, MTCNN_STD), (IMAGENET_MEAN, IMAGENET_STD)]
    else:
        resize, center_crop, steps = RESIZE, IMAGE_SIZE, [(IMAGENET_MEAN, IMAGENET_STD)]
    mean, std = _as_one_step(steps)
    return {"source": source, "resize": resize, "center_crop": center_crop,
            "image_size": IMAGE_SIZE,
            "normalize": [{"mean": list(m), "std": list(s)} for m, s in steps],
            "mean": mean, "std": std, "face_crop": "mexca" if source == "mexca" else "square"}


def _as_one_step(steps) -> Tuple[List[float], List[float]]:
    """``(mean, std)`` with ``(x - mean) / std`` equal to the ``(x - m) / s`` steps in order:
    ``((x - m1) / s1 - m2) / s2 = (x - (m1 + m2 s1)) / (s1 s2)``."""
    mean, std = [0.0] * 3, [1.0] * 3
    for step_mean, step_std in steps:
        mean = [m + sm * s for m, sm, s in zip(mean, step_mean, std)]
        std = [s * ss for s, ss in zip(std, step_std)]
    return mean, std


def published_transform(source: str):
    """The eval transform of ``source`` as a ``torchvision.transforms.Compose``, the steps of
    :func:`published_preprocessing`:

    - ``"opengraphau"``, ``"me-graphau"`` (their ``image_eval`` / ``image_test``): ``Resize(256)``
      (shorter side, bilinear), ``CenterCrop(224)``, ``ToTensor``, ImageNet ``Normalize``;
    - ``"mexca"``: the face crop resized to 224x224 as facenet's MTCNN hands it over, with MTCNN's
      standardisation :math:`(x - 127.5) / 128` on 0-255 pixels, then ImageNet ``Normalize``
      (mexca applies both).
    """
    steps = published_preprocessing(source)
    try:
        from torchvision import transforms
    except ImportError as error:
        raise ModuleNotFoundError("the published preprocessing needs torchvision: "
                                  "pip install pyg_mefl[vision]", name="torchvision") from error
    resize = steps["resize"]
    pipeline = [transforms.Resize(tuple(resize) if isinstance(resize, list) else resize)]
    if steps["center_crop"] is not None:
        pipeline.append(transforms.CenterCrop(steps["center_crop"]))
    pipeline.append(transforms.ToTensor())
    pipeline += [transforms.Normalize(tuple(step["mean"]), tuple(step["std"]))
                 for step in steps["normalize"]]
    return transforms.Compose(pipeline)
