"""An AU head behind an optional image backbone: trained on batches of face graphs, or a whole
published model run on face images."""
import copy
from pathlib import Path
from typing import List, Mapping, Optional

import torch
from torch import Tensor
from torch.nn import Module
from torch_geometric.data import Batch

from ..nn.mefl import MEFL, MEFLOutput
from .model_dir import load_model_directory, read_model_config, save_model_directory
from .published import face_au_model_to_published, load_face_au_model, resolve_model


class FaceAUModel(Module):
    r"""An AU head (:class:`~pyg_mefl.MEFL` or the stage-1 :class:`~pyg_mefl.ANFL`) on face
    graphs, behind an optional backbone that computes each face's tokens from
    its ``image`` (for :class:`~pyg_mefl.datasets.ImageListFaceDataset`); without a backbone the
    graphs carry their tokens. :meth:`from_pretrained` builds a whole published model
    (backbone, global linear block, head) that :meth:`predict` runs on face images.

    Args:
        head (MEFL or ANFL): The AU head.
        backbone (torch.nn.Module, optional): Images :math:`(B, 3, H, W)` to tokens
            :math:`(B, D, C)`, e.g. :class:`~pyg_mefl.backbones.SmallCNN`.

    Shapes:
        - **input:** a ``Batch`` of face graphs
        - **output:** :class:`~pyg_mefl.MEFLOutput` (``edge_attr`` and ``edge_logits`` aligned
          with ``batch.edge_index``; both :obj:`None` for an ANFL head)
    """

    def __init__(self, head: Module, backbone: Optional[Module] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.source: Optional[str] = None  # the published source of a loaded model
        self.stage: Optional[int] = None
        self.transform = None  # PIL image -> [3, 224, 224], the source's eval preprocessing
        self.thresholds: Optional[List[float]] = None  # per AU, from a model directory

    @property
    def au_names(self) -> List[str]:
        """The names of the outputs, main then sub AUs (the published order for a loaded
        model)."""
        return self.head.au_names

    def tokens(self, batch: Batch) -> Tensor:
        """The faces' tokens ``[B, D, C]``: from the backbone, or as the graphs carry them."""
        if self.backbone is None:
            return batch.tokens
        if getattr(batch, "image", None) is None:
            raise ValueError("FaceAUModel: the model has a backbone but the batch has no 'image'")
        return self.backbone(batch.image)

    def forward(self, batch: Batch) -> MEFLOutput:
        if self.backbone is not None:
            batch = copy.copy(batch)
            batch.tokens = self.tokens(batch)
        if isinstance(self.head, MEFL):
            return self.head(batch, return_edges=True)
        # a stage-1 head builds its own kNN graph per face and has no edge features to return
        return MEFLOutput(self.head(batch), None, None)

    def predict(self, images: Tensor) -> Tensor:
        """AU probabilities ``[B, num_outputs]`` in :attr:`au_names` order of images
        ``[B, 3, H, W]`` (e.g. stacked :attr:`transform` outputs), in eval mode and
        ``torch.inference_mode``; the model's train/eval mode is restored afterwards."""
        if self.backbone is None:
            raise ValueError("predict: the model has no backbone (it reads tokens from face "
                             "graphs); call the model on a Batch instead")
        if not isinstance(images, Tensor) or images.dim() != 4 or images.size(1) != 3:
            shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected a tensor of shape [B, 3, H, W], got {shape}")
        parameter = next(self.parameters())
        training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self.head(self.backbone(images.to(parameter.device, parameter.dtype)))
        finally:
            self.train(training)

    @classmethod
    def from_pretrained(cls, path_or_dir, source: Optional[str] = None,
                        stage: Optional[int] = None, backbone: Optional[str] = None,
                        **overrides) -> "FaceAUModel":
        r"""A whole model, built and loaded strictly: a pyg_mefl model directory (see
        :meth:`save_pretrained`) or a published model (docs/math.md §10).

        Args:
            path_or_dir (str, os.PathLike or Mapping): A pyg_mefl model directory (its
                ``config.json`` of format ``pyg_mefl.FaceAUModel`` and ``model.safetensors``) or
                the hub id of one; an OpenGraphAU / ME-GraphAU training
                checkpoint (``{'epoch', 'state_dict', 'optimizer'}``, keys ``backbone.*``,
                ``global_linear.*``, ``head.*``, ``module.``-prefixed or not; read with
                ``torch.load(..., weights_only=True)``), a mexca hub directory (``config.json``
                and ``model.safetensors`` or ``pytorch_model.bin``), a hub id such as
                ``"mexca/mefarg-open-graph-au-resnet50-stage-2"`` (through ``huggingface_hub``,
                when installed and online or cached), or a state dict.
            source (str, optional): ``"mexca"``, ``"opengraphau"`` or ``"me-graphau"``;
                detected from the keys if :obj:`None`.
            stage (int, optional): 1 (ANFL head) or 2 (MEFL head); detected if :obj:`None`.
            backbone (str, optional): ``"resnet18"`` ... ``"resnet152"``, ``"swin_tiny"``,
                ``"swin_small"``, ``"swin_base"``; detected from the keys and shapes if
                :obj:`None`.
            **overrides: Options of the stage-1 head (e.g. ``neighbor_num``).

        The backbone is torchvision's ResNet or timm's Swin (the ``vision`` extra; Microsoft's
        Swin layout is mapped onto timm's, its stored buffers checked against timm's). Every
        tensor of the file is used: a missing or unexpected key raises :class:`KeyError`, a
        wrong shape, a stage, backbone or source other than the one asked for
        :class:`ValueError`, each naming the file and the keys; a missing file, or a directory
        without ``config.json`` or weights, :class:`FileNotFoundError`. The model is in train
        mode like any new module; :attr:`au_names`, :attr:`transform` (the source's eval
        preprocessing), :attr:`source` and :attr:`stage` describe it, and for a model directory
        :attr:`thresholds` its per-AU decision thresholds. A model directory is read as
        strictly: a missing or unknown field of its ``config.json`` is a :class:`ValueError`
        naming the field, a missing or unexpected tensor a :class:`KeyError` naming the keys;
        ``source``, ``stage`` and ``backbone``, if given, must match its config.
        """
        path_or_dir = resolve_model(path_or_dir)
        config = None if isinstance(path_or_dir, Mapping) else read_model_config(path_or_dir)
        if config is not None:
            return load_model_directory(cls, path_or_dir, config, source, stage, backbone,
                                        **overrides)
        return load_face_au_model(cls, path_or_dir, source, stage, backbone, **overrides)

    def save_pretrained(self, directory, *, thresholds=None,
                        training: Optional[Mapping] = None) -> Path:
        r"""Write the model as a pyg_mefl model directory: ``config.json`` and
        ``model.safetensors`` (the layout of ``huggingface_hub``'s ``PyTorchModelHubMixin``),
        which :meth:`from_pretrained` and ``python -m pyg_mefl predict --checkpoint DIR`` load.

        ``config.json`` holds the format name and version, the backbone (``"cnn"``: a
        :class:`~pyg_mefl.backbones.SmallCNN` and its sizes; a ResNet or Swin name and the
        global linear block; or :obj:`null`), the head (``MEFL`` or ``ANFL`` and its
        arguments), :attr:`au_names`, per-AU thresholds, the preprocessing of :attr:`source`
        (:func:`~pyg_mefl.models.preprocessing.published_preprocessing`; :obj:`null` for a model
        without a source), the weights' dtype, ``training`` and the pyg_mefl version. Needs the
        ``vision`` extra (safetensors).

        Args:
            directory (str or os.PathLike): Where to write (created if needed; the two files
                are replaced).
            thresholds (float, sequence or mapping, optional): Per-AU decision thresholds: one
                number for all, one per AU in :attr:`au_names` order, or a mapping of every AU
                name to its threshold. (default: :attr:`thresholds`, else 0.5 each)
            training (mapping, optional): A free JSON record of the run (metrics, data,
                settings), kept in ``config.json`` as it is.

        Returns:
            The directory, as a :class:`pathlib.Path`.
        """
        return save_model_directory(self, directory, thresholds, training)

    def push_to_hub(self, repo_id: str, *, thresholds=None, training: Optional[Mapping] = None,
                    private: Optional[bool] = None, token: Optional[str] = None,
                    revision: Optional[str] = None,
                    commit_message: str = "Upload a pyg_mefl FaceAUModel"):
        """Upload the model as a model directory (:meth:`save_pretrained`, written into a
        temporary directory) to the Hugging Face hub model repo ``repo_id``, which is created
        if it does not exist (``private`` as given, else the hub's default), with
        ``huggingface_hub``'s ``HfApi.create_repo`` and ``HfApi.upload_folder``; ``token``
        (default: the logged-in user's) and ``revision`` (default: the main branch) go to
        them. Returns the upload's commit information. ``FaceAUModel.from_pretrained(repo_id)``
        loads it back."""
        from .model_dir import push_model_to_hub
        return push_model_to_hub(self, repo_id, thresholds=thresholds, training=training,
                                 private=private, token=token, revision=revision,
                                 commit_message=commit_message)

    def to_published_state_dict(self, layout: str, whole_model: bool = True) -> dict:
        """The weights under the names of a published ``layout`` (``"mexca"``,
        ``"opengraphau"``, ``"me-graphau"``) and in its order, as fresh tensors: the whole
        model (``backbone.*``, the global linear block, ``head.*``; Swin in Microsoft's layout
        with its buffers) or, without ``whole_model``, the head alone."""
        return face_au_model_to_published(self, layout, whole_model)
