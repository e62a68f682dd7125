r"""Labelled face crops (image files) as face graphs for a whole model: each item carries the
crop through the model's preprocessing, or through the published train-time augmentation."""
import copy
from typing import List, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..models.preprocessing import IMAGE_SIZE, RESIZE, published_preprocessing
from ..data.datasets import FaceGraphDataset
from ..data.graph import face_graph

# ME-GraphAU's image_train: ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)
COLOR_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0)


def training_transform(source: str):
    r"""The train-time transform for a model of ``source``: ME-GraphAU's ``image_train`` on the
    source's own preprocessing. The face is resized :math:`256 / 224` times larger than the eval
    transform resizes it (ME-GraphAU: ``Resize(256)``), a random ``224 x 224`` crop is taken
    (ME-GraphAU draws its offset per image), colours are jittered (brightness, contrast and
    saturation by up to 40 %, hue kept), then ``ToTensor`` and the source's normalisation. The
    horizontal flip is left to :class:`LabelledPhotoDataset`, which swaps the labels of left and
    right sub-AUs with it. Every random draw comes from torch's global generator, so a seeded
    run repeats and a resumed run continues it."""
    from torchvision import transforms
    steps = published_preprocessing(source)
    resize = steps["resize"]
    if isinstance(resize, list):
        resize = tuple(round(side * RESIZE / IMAGE_SIZE) for side in resize)
    elif steps["center_crop"] is None:
        resize = round(resize * RESIZE / IMAGE_SIZE)
    pipeline = [transforms.Resize(resize), transforms.RandomCrop(steps["image_size"]),
                transforms.ColorJitter(**COLOR_JITTER), transforms.ToTensor()]
    pipeline += [transforms.Normalize(tuple(step["mean"]), tuple(step["std"]))
                 for step in steps["normalize"]]
    return transforms.Compose(pipeline)


def mirrored_au_order(au_names: Sequence[str]) -> Tensor:
    """The permutation of the label columns for a horizontally flipped face: each left sub-AU
    (``AUL<k>``) and its right twin (``AUR<k>``) swap; every other AU stays."""
    names = list(au_names)
    order = list(range(len(names)))
    for index, name in enumerate(names):
        for side, other in (("AUL", "AUR"), ("AUR", "AUL")):
            if name.startswith(side) and other + name[len(side):] in names:
                order[index] = names.index(other + name[len(side):])
    return torch.tensor(order, dtype=torch.long)


class LabelledPhotoDataset(FaceGraphDataset):
    r"""Face crops with AU labels over a whole model's outputs (main then sub AUs), as face
    graphs whose ``image`` the model's backbone reads.

    Args:
        images (list of str): Each face crop's image file.
        labels (torch.Tensor): ``[M, A]`` labels ``1``, ``0``, ``-1`` (unknown) in ``au_names``
            order.
        split (torch.Tensor): ``[M]`` split codes (``0`` train, ``1`` val, ``2`` test).
        au_names (list of str): The model's AU names, main then sub AUs.
        num_main_aus (int): How many of them are main AUs (graph nodes).
        transform (callable): A PIL image to the ``[3, H, W]`` model input (the model's
            :attr:`~pyg_mefl.FaceAUModel.transform`).
        source (str): Where the labels came from, named in error messages.
    """

    def __init__(self, images: List[str], labels: Tensor, split: Tensor, au_names: Sequence[str],
                 num_main_aus: int, transform, source: str = "labels"):
        super().__init__(labels, split, au_names, source=source)
        if len(images) != self.labels.size(0):
            raise ValueError(f"{source}: {len(images)} images for {self.labels.size(0)} label "
                             f"rows")
        self.images = list(images)
        self.num_main_aus = num_main_aus
        self.image_transform = transform
        self.flip = False
        self.mirrored = mirrored_au_order(self.au_names)

    def augmented(self, transform) -> "LabelledPhotoDataset":
        """A copy whose crops go through ``transform`` (e.g. :func:`training_transform`) and are
        flipped horizontally with probability 1/2 (the left/right sub-AU labels swapped)."""
        part = copy.copy(self)
        part.image_transform, part.flip = transform, True
        return part

    def face_tokens(self, idx: int) -> None:
        return None

    def get(self, idx: int) -> Data:
        from PIL import Image
        with Image.open(self.images[idx]) as image:
            image = image.convert("RGB")
        labels = self.labels[idx]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            labels = labels[self.mirrored]
        data = face_graph(None, labels=labels, au_ids=torch.arange(self.num_main_aus))
        data.image = self.image_transform(image).unsqueeze(0)
        return data
