r"""AU data as PyG datasets of face graphs (:func:`~pyg_mefl.face_graph`): built-in synthetic
faces, token-feature files and face images in the ME-GraphAU list layout."""
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data, Dataset

from .aus import BP4D_AUS, DISFA_AUS, check_au_names, default_au_names
from .graph import face_graph

SPLITS = ("train", "val", "test")
PathLike = Union[str, os.PathLike]
# ImageNet statistics: what torchvision's ResNet-50 weights expect, and a sane default otherwise.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
_LIST_AUS = {"BP4D": BP4D_AUS, "DISFA": DISFA_AUS}


def random_split(num_faces: int, seed: int = 0,
                 fractions: Tuple[float, float] = (0.7, 0.1)) -> Tensor:
    """A seeded split code per face: ``0`` train, ``1`` val, ``2`` test, in the proportions
    ``fractions[0]``, ``fractions[1]`` and the rest (70/10/20 by default)."""
    order = torch.randperm(num_faces, generator=torch.Generator().manual_seed(seed))
    num_train, num_val = int(round(fractions[0] * num_faces)), int(round(fractions[1] * num_faces))
    split = torch.full((num_faces,), 2, dtype=torch.long)
    split[order[:num_train]] = 0
    split[order[num_train:num_train + num_val]] = 1
    return split


def vocabulary_ids(au_names: Sequence[str], vocabulary: Sequence[str]) -> Tensor:
    """Index of each of ``au_names`` in ``vocabulary``: the ``au_ids`` that put a data set's AUs
    (e.g. BP4D's 12) into the nodes of a model over a larger AU vocabulary (e.g. the 27 of
    OpenGraphAU), so that data sets with different AU sets train one model."""
    index = {name: i for i, name in enumerate(vocabulary)}
    missing = [name for name in au_names if name not in index]
    if missing:
        raise KeyError(f"au_names: {missing} not in the vocabulary {list(vocabulary)}")
    return torch.tensor([index[name] for name in au_names], dtype=torch.long)


class FaceGraphDataset(Dataset):
    r"""Faces as AU graphs (:func:`~pyg_mefl.face_graph`) for PyG's
    :class:`~torch_geometric.loader.DataLoader`: the base of the three data sources.

    Each item holds the face's tokens (or, for image sources, its ``image``), the AU node ids
    ``au_id``, the labels ``y`` (``1``, ``0``, ``-1`` unknown) and the edge relation labels
    ``edge_y``. Subclasses implement :meth:`face_tokens`.

    Args:
        labels (torch.Tensor): AU labels of every face, ``[M, N]``, values ``1``, ``0``, ``-1``.
        split (torch.Tensor): Split code of every face, ``[M]``: ``0`` train, ``1`` val,
            ``2`` test.
        au_names (list of str, optional): Names of the ``N`` label columns (default: the
            published names for 27, 12 and 8 AUs, ``"AU#k"`` otherwise).
        au_ids (list of int or torch.Tensor, optional): Vocabulary id of each column (default:
            ``0..N-1``); see :func:`vocabulary_ids`.
        transform (callable, optional): PyG transform applied to each graph.
        source (str, optional): Where the data came from, named in error messages.
    """

    def __init__(self, labels: Tensor, split: Tensor, au_names: Optional[Sequence[str]] = None,
                 au_ids: Optional[Union[Sequence[int], Tensor]] = None, transform=None,
                 source: str = "labels"):
        super().__init__(transform=transform)
        self.labels = _check_labels(labels, source)
        num_faces, num_aus = self.labels.shape
        self.split = _check_split(split, num_faces, source)
        self.au_names: List[str] = check_au_names(au_names, num_aus) or default_au_names(num_aus)
        self.au_ids = torch.arange(num_aus) if au_ids is None else \
            torch.as_tensor(au_ids, dtype=torch.long)
        if self.au_ids.shape != (num_aus,):
            raise ValueError(f"au_ids: expected {num_aus} ids (one per label column), "
                             f"got shape {list(self.au_ids.shape)}")

    @property
    def num_aus(self) -> int:
        """Number of AU label columns."""
        return self.labels.size(1)

    def len(self) -> int:
        return self.labels.size(0)

    def face_tokens(self, idx: int) -> Optional[Tensor]:
        """Tokens ``[D, C]`` of face ``idx``, or :obj:`None` where a backbone computes them."""
        raise NotImplementedError

    def get(self, idx: int) -> Data:
        return face_graph(self.face_tokens(idx), labels=self.labels[idx], au_ids=self.au_ids)

    def subset(self, split: str) -> "FaceGraphDataset":
        """The faces of ``split`` (``"train"``, ``"val"`` or ``"test"``) of this dataset."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        mine = self.split[self.index_tensor()] == SPLITS.index(split)
        return self.index_select(torch.nonzero(mine).flatten())

    def index_tensor(self) -> Tensor:
        """Indices of this (sub)set's faces into :attr:`labels`."""
        return torch.as_tensor(list(self.indices()), dtype=torch.long)

    def face_labels(self) -> Tensor:
        """Labels ``[len(self), N]`` of this (sub)set's faces."""
        return self.labels[self.index_tensor()]


class TokenFaceDataset(FaceGraphDataset):
    r"""Faces given as backbone tokens, e.g. features extracted once from a frozen backbone.

    Args:
        tokens (torch.Tensor): ``[M, D, C]`` float tokens.
        labels (torch.Tensor): ``[M, N]`` AU labels, ``1``, ``0`` or ``-1`` (unknown).
        split (torch.Tensor, optional): ``[M]`` split codes (``0`` train, ``1`` val, ``2``
            test); default: a seeded 70/10/20 :func:`random_split`.
        au_names, au_ids, transform: as :class:`FaceGraphDataset`.
        seed (int): Seed of the default split. (default: :obj:`0`)
        source (str): Named in error messages. (default: ``"tokens"``)

    Shapes:
        - **item:** ``Data(tokens=[1, D, C], au_id=[N], edge_index=[2, N*N], y=[N],
          y_sub=[1, 0], edge_y=[N*N])``
    """

    def __init__(self, tokens: Tensor, labels: Tensor, split: Optional[Tensor] = None,
                 au_names: Optional[Sequence[str]] = None,
                 au_ids: Optional[Union[Sequence[int], Tensor]] = None, transform=None,
                 seed: int = 0, source: str = "tokens"):
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or not tokens.is_floating_point():
            shape = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"{source}: tokens: expected a float tensor [M, D, C], got {shape}")
        if isinstance(labels, Tensor) and labels.dim() >= 1 and labels.size(0) != tokens.size(0):
            raise ValueError(f"{source}: labels: expected {tokens.size(0)} rows (one per face "
                             f"of tokens), got {labels.size(0)}")
        split = random_split(tokens.size(0), seed) if split is None else split
        super().__init__(labels, split, au_names, au_ids, transform, source)
        self.tokens = tokens

    @classmethod
    def from_file(cls, path: PathLike, **kwargs) -> "TokenFaceDataset":
        r"""Faces from a file written by :func:`torch.save`: a dict with ``tokens``
        ``[M, D, C]`` float, ``labels`` ``[M, N]`` int (``1``, ``0``, ``-1``), and optionally
        ``split`` ``[M]`` long and ``au_names`` (list of ``N`` str). ``kwargs`` go to the
        constructor (``au_ids``, ``seed``, ``transform``)."""
        content = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(content, dict):
            raise ValueError(f"{path}: expected a dict with 'tokens' and 'labels', "
                             f"got {type(content).__name__}")
        missing = [key for key in ("tokens", "labels") if key not in content]
        if missing:
            raise KeyError(f"{path}: missing {missing} (expected keys 'tokens', 'labels' and "
                           f"optionally 'split', 'au_names')")
        unknown = sorted(set(content) - {"tokens", "labels", "split", "au_names"})
        if unknown:
            raise KeyError(f"{path}: unexpected keys {unknown} (expected 'tokens', 'labels', "
                           f"'split', 'au_names')")
        return cls(content["tokens"], content["labels"], content.get("split"),
                   content.get("au_names"), source=str(path), **kwargs)

    def face_tokens(self, idx: int) -> Tensor:
        return self.tokens[idx]


class SyntheticFaceDataset(TokenFaceDataset):
    r"""Seeded synthetic faces whose AUs co-occur and whose evidence is local, so that both the
    AU relations and the token positions matter (the built-in default data).

    - **Co-occurrence:** ``num_prototypes`` expression prototypes (a neutral face and random AU
      sets; every AU belongs to one at least); a face is a uniformly drawn prototype whose labels
      flip with probability ``label_noise``.
    - **Local evidence:** each AU moves one token (its face region) along one of
      ``num_directions`` directions of channel space that the AUs share, each AU with its own
      (region, direction) pair; the tokens also carry a fixed per-region appearance, a per-face
      offset and Gaussian noise. AUs that share a direction differ only in *where* they move
      the face (as AU1 and AU2 raise the inner and the outer brow), which a mean over the tokens
      cannot tell apart.
    - **Weak AUs:** every third AU moves its region at a quarter of the strength (subtle or
      occluded), so it is best inferred from the AUs it co-occurs with.

    Args:
        num_faces (int): Number of faces :math:`M`. (default: :obj:`2000`)
        num_aus (int): Number of AUs :math:`N`, named as :func:`~pyg_mefl.aus.default_au_names`
            (default: :obj:`27`, the OpenGraphAU main AUs)
        num_tokens (int): Tokens per face :math:`D` (a 3x3 grid by default). (default: :obj:`9`)
        channels (int): Token width :math:`C`. (default: :obj:`32`)
        num_directions (int): Shared evidence directions; ``num_tokens * num_directions`` must
            be at least ``num_aus``. (default: :obj:`3`)
        num_prototypes (int): Expression prototypes. (default: :obj:`8`)
        label_noise (float): Label flip probability. (default: :obj:`0.05`)
        noise (float): Standard deviation of the token noise. (default: :obj:`0.5`)
        seed (int): Seed of the faces and of the 70/10/20 split. (default: :obj:`0`)
        **kwargs (optional): ``au_ids``, ``transform`` of :class:`FaceGraphDataset`.

    Shapes:
        - **item:** as :class:`TokenFaceDataset`
    """

    def __init__(self, num_faces: int = 2000, num_aus: int = 27, num_tokens: int = 9,
                 channels: int = 32, num_directions: int = 3, num_prototypes: int = 8,
                 label_noise: float = 0.05, noise: float = 0.5, seed: int = 0, **kwargs):
        for name, value, low in (("num_faces", num_faces, 1), ("num_aus", num_aus, 1),
                                 ("num_tokens", num_tokens, 1), ("channels", channels, 1),
                                 ("num_directions", num_directions, 1),
                                 ("num_prototypes", num_prototypes, 2)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if num_tokens * num_directions < num_aus:
            raise ValueError(f"num_tokens * num_directions = {num_tokens * num_directions} "
                             f"(region, direction) pairs cannot give {num_aus} AUs one each")
        generator = torch.Generator().manual_seed(seed)
        prototypes = _prototypes(num_prototypes, num_aus, generator)
        labels = prototypes[torch.randint(num_prototypes, (num_faces,), generator=generator)]
        flip = torch.rand(num_faces, num_aus, generator=generator) < label_noise
        labels = torch.where(flip, 1 - labels, labels)
        tokens = _synthetic_tokens(labels, num_tokens, channels, num_directions, noise, generator)
        super().__init__(tokens, labels, seed=seed, source="synthetic", **kwargs)
        self.prototypes = prototypes


def _prototypes(num_prototypes: int, num_aus: int, generator: torch.Generator) -> Tensor:
    """A neutral face and ``num_prototypes - 1`` random AU sets covering every AU."""
    prototypes = (torch.rand(num_prototypes, num_aus, generator=generator) < 0.3).long()
    prototypes[0] = 0
    uncovered = torch.nonzero(prototypes.sum(0) == 0).flatten()
    owner = torch.randint(1, num_prototypes, (uncovered.numel(),), generator=generator)
    prototypes[owner, uncovered] = 1
    return prototypes


def _synthetic_tokens(labels: Tensor, num_tokens: int, channels: int, num_directions: int,
                      noise: float, generator: torch.Generator) -> Tensor:
    num_faces, num_aus = labels.shape
    # each AU moves its own (region, direction) pair; every third AU is weak
    pair = torch.randperm(num_tokens * num_directions, generator=generator)[:num_aus]
    region, direction = pair // num_directions, pair % num_directions
    directions = F.normalize(torch.randn(num_directions, channels, generator=generator), dim=1)
    strength = torch.where(torch.arange(num_aus) % 3 == 2, 0.75, 3.0)
    evidence = (labels.float() * strength).unsqueeze(-1) * directions[direction]
    tokens = torch.randn(num_tokens, channels, generator=generator).expand(num_faces, -1, -1)
    tokens = tokens + 0.5 * torch.randn(num_faces, 1, channels, generator=generator)
    tokens = tokens.index_add(1, region, evidence)
    return tokens + noise * torch.randn(num_faces, num_tokens, channels, generator=generator)


class ImageListFaceDataset(FaceGraphDataset):
    r"""Face images in the ME-GraphAU list layout, for a backbone trained with MEFL:

    .. code-block:: none

        <root>/list/<name>_train_img_path_fold<k>.txt   one image path per line
        <root>/list/<name>_train_label_fold<k>.txt      one row of AU labels per line
        <root>/list/<name>_test_img_path_fold<k>.txt
        <root>/list/<name>_test_label_fold<k>.txt
        <root>/img/<image path>

    Label rows are whitespace-separated ``1``, ``0`` or ``-1`` (unknown), one per AU. The train
    list is split into train and val (a seeded ``val_fraction``), the test list is the test
    split. Items carry ``image`` ``[1, 3, S, S]`` (RGB resized to ``image_size``, ImageNet
    standardised) instead of tokens.

    Args:
        root (str or os.PathLike): Data set root.
        name (str): Data set name in the list files, e.g. ``"BP4D"``, ``"DISFA"``.
        fold (int): Fold number :math:`k`.
        image_size (int): Side :math:`S` the images are resized to. (default: :obj:`224`)
        au_names (list of str, optional): Names of the label columns (default: the BP4D or DISFA
            AUs for those names, else :func:`default_au_names`).
        val_fraction (float): Part of the train list held out for validation.
            (default: :obj:`0.1`)
        seed (int): Seed of the val split. (default: :obj:`0`)
        **kwargs (optional): ``au_ids``, ``transform`` of :class:`FaceGraphDataset`.
    """

    def __init__(self, root: PathLike, name: str, fold: int, image_size: int = 224,
                 au_names: Optional[Sequence[str]] = None, val_fraction: float = 0.1,
                 seed: int = 0, **kwargs):
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
        self.root = os.fspath(root)
        self.image_size = image_size
        if au_names is None and name in _LIST_AUS:
            au_names = _LIST_AUS[name]
        train_paths, train_labels = _read_list(self.root, name, "train", fold,
                                               None if au_names is None else len(au_names))
        test_paths, test_labels = _read_list(self.root, name, "test", fold, train_labels.size(1))
        val = random_split(len(train_paths), seed, (1.0 - val_fraction, val_fraction))
        split = torch.cat([val.clamp(max=1), torch.full((len(test_paths),), 2)])
        self.paths = train_paths + test_paths
        super().__init__(torch.cat([train_labels, test_labels]), split, au_names, **kwargs)

    def face_tokens(self, idx: int) -> None:
        return None

    def get(self, idx: int) -> Data:
        data = super().get(idx)
        data.image = read_image(self.paths[idx], self.image_size).unsqueeze(0)
        return data


def _list_file(root: str, name: str, part: str, kind: str, fold: int) -> str:
    return os.path.join(root, "list", f"{name}_{part}_{kind}_fold{fold}.txt")


def _read_list(root: str, name: str, part: str, fold: int,
               num_aus: Optional[int]) -> Tuple[List[str], Tensor]:
    """Image paths and labels of one ME-GraphAU list pair, checked line by line."""
    path_file = _list_file(root, name, part, "img_path", fold)
    label_file = _list_file(root, name, part, "label", fold)
    for file in (path_file, label_file):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file}: list file not found (expected the ME-GraphAU "
                                    f"layout <root>/list/<name>_<train|test>_<img_path|label>"
                                    f"_fold<k>.txt)")
    with open(path_file) as f:
        paths = [(number, line.strip()) for number, line in enumerate(f, start=1) if line.strip()]
    rows = []
    with open(label_file) as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            num_aus = len(fields) if num_aus is None else num_aus
            if len(fields) != num_aus:
                raise ValueError(f"{label_file}, line {line_number}: expected {num_aus} labels "
                                 f"(one per AU), got {len(fields)}")
            try:
                row = [float(field) for field in fields]
            except ValueError:
                row = None
            if row is None or any(value not in (-1.0, 0.0, 1.0) for value in row):
                raise ValueError(f"{label_file}, line {line_number}: labels must be 1, 0 or -1, "
                                 f"got {line.strip()!r}")
            rows.append([int(value) for value in row])
    if len(paths) != len(rows):
        raise ValueError(f"{path_file} lists {len(paths)} images but {label_file} has "
                         f"{len(rows)} label rows")
    images = [os.path.join(root, "img", path) for _, path in paths]
    for (line_number, _), image in zip(paths, images):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{path_file}, line {line_number}: image {image} not found")
    return images, torch.tensor(rows, dtype=torch.long).view(len(rows), num_aus or 0)


def read_image(path: PathLike, size: int) -> Tensor:
    """The RGB image at ``path`` resized to ``size x size`` and standardised with the ImageNet
    mean and std, as a ``[3, size, size]`` float tensor (read with Pillow)."""
    from PIL import Image
    with Image.open(path) as image:
        image = image.convert("RGB").resize((size, size), Image.BILINEAR)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(size, size, 3).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return (pixels - mean) / std


def _check_labels(labels, source: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dim() != 2:
        shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{source}: labels: expected a tensor [M, N], got {shape}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError(f"{source}: labels: expected integers 1, 0 or -1")
    labels = labels.long()
    bad = ~((labels == 1) | (labels == 0) | (labels == -1))
    if bool(bad.any()):
        row, column = torch.nonzero(bad)[0].tolist()
        raise ValueError(f"{source}: labels: expected values 1, 0 or -1 (unknown), got "
                         f"{labels[row, column].item()} at face {row}, AU column {column}")
    return labels


def _check_split(split, num_faces: int, source: str) -> Tensor:
    if not isinstance(split, Tensor) or split.shape != (num_faces,):
        shape = list(split.shape) if isinstance(split, Tensor) else type(split).__name__
        raise ValueError(f"{source}: split: expected a tensor [{num_faces}] (one code per face), "
                         f"got {shape}")
    split = split.long()
    if bool(((split < 0) | (split > 2)).any()):
        raise ValueError(f"{source}: split: expected codes 0 (train), 1 (val), 2 (test), got "
                         f"{sorted(set(split.tolist()) - {0, 1, 2})}")
    return split
