"""A whole model as an ONNX file: preprocessed face crops ``[B, 3, H, W]`` (float32, any batch)
to AU probabilities ``[B, num_aus]``, through PyTorch's dynamo-based exporter
(``torch.onnx.export(..., dynamo=True)``, which traces with ``torch.export``), with the facts a
runtime needs in the model's ``metadata_props``."""
import copy
import json
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor
from torch.nn import Module

from ..utils.version import __version__
from ..utils.files import write_atomically
from .model_dir import check_thresholds
from .preprocessing import IMAGE_SIZE, published_preprocessing

INPUT_NAME, OUTPUT_NAME = "images", "probs"


class _Probabilities(Module):
    """Images to AU probabilities: the backbone, then the head (what
    :meth:`~pyg_mefl.FaceAUModel.predict` runs)."""

    def __init__(self, backbone: Module, head: Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


def onnx_metadata(model) -> Dict[str, str]:
    """The ``metadata_props`` of an exported ``model``, each value a JSON text:
    ``au_names`` (the outputs' order), ``thresholds`` (per AU, in that order), ``input_size``
    (``[3, H, W]``), ``mean`` and ``std`` (one ``(x - mean) / std`` on 0-1 RGB pixels; null
    without a source), ``preprocessing`` (the source's steps, see
    :func:`~pyg_mefl.models.preprocessing.published_preprocessing`), ``source``, ``stage``."""
    preprocessing = published_preprocessing(model.source) if model.source else None
    size = preprocessing["image_size"] if preprocessing else IMAGE_SIZE
    facts = {"au_names": list(model.au_names),
             "thresholds": check_thresholds(model.thresholds, model.au_names),
             "input_size": [3, size, size],
             "mean": preprocessing["mean"] if preprocessing else None,
             "std": preprocessing["std"] if preprocessing else None,
             "preprocessing": preprocessing, "source": model.source, "stage": model.stage,
             "pyg_mefl_version": __version__}
    return {key: json.dumps(value) for key, value in facts.items()}


def export_onnx(model, path) -> Path:
    r"""Write ``model`` (a :class:`~pyg_mefl.FaceAUModel` with a backbone) to the ONNX file
    ``path``: input ``images`` :math:`(B, 3, H, W)` float32 with a dynamic batch ``B`` (the
    source's preprocessed face crops; :math:`H = W = 224` for the published sources), output
    ``probs`` :math:`(B, N + S)` in :attr:`~pyg_mefl.FaceAUModel.au_names` order; the facts of
    :func:`onnx_metadata` in its ``metadata_props``. The model is exported in eval mode, as a
    float32 copy, and runs the head without splitting the batch into chunks of faces; the file
    is written beside ``path`` and moved there, so a failed export leaves none.

    Needs ``onnx`` and ``onnxscript`` (the ``export`` extra). Returns ``path``.
    """
    if getattr(model, "backbone", None) is None:
        raise ValueError("export: the model has no backbone (it reads tokens from face graphs); "
                         "an exported model reads face images")
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter's dependency, checked here for its message)
    except ImportError as error:
        raise ModuleNotFoundError(f"ONNX export needs onnx and onnxscript: pip install "
                                  f"pyg_mefl[export] ({error})", name=error.name) from None
    metadata = onnx_metadata(model)
    size = json.loads(metadata["input_size"])
    network = _Probabilities(copy.deepcopy(model.backbone), copy.deepcopy(model.head))
    network.float().eval()
    if hasattr(network.head, "faces_per_chunk"):
        network.head.faces_per_chunk = None  # a loop over chunks would fix the batch size
    example = torch.zeros(2, *size)  # 2: a traced batch of 1 would be taken as a constant
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(network, (example,), input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                    dynamo=True, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    path = Path(path)
    write_atomically(path, lambda temporary: onnx.save(proto, temporary))
    return path
