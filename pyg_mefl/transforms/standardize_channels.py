"""Per-channel standardisation with statistics of the training split."""
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform
from tqdm import tqdm

from ._tokens import face_tokens


class StandardizeChannels(BaseTransform):
    r"""Standardises every token channel with a mean and a standard deviation fitted once, on
    the training split (:meth:`fit`),

    .. math::
        x_{dc} \leftarrow \frac{x_{dc} - \mu_c}{\sigma_c},

    :math:`\mu_c, \sigma_c` over the faces and tokens of the training split, so that channels
    on very different scales (un-normalised backbone features) weigh alike. The statistics are
    tensors (:meth:`state_dict`), saved with a model's checkpoint and applied unchanged at
    prediction.

    Args:
        eps (float): Lower bound of :math:`\sigma_c` (a constant channel stays centred, not
            infinite). (default: :obj:`1e-6`)

    Shapes:
        - **input:** a face graph (or batch) with ``tokens`` :math:`(B, D, C)`
        - **output:** the same, ``tokens`` standardised per channel
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = eps
        self.mean: Optional[Tensor] = None
        self.std: Optional[Tensor] = None

    @torch.no_grad()
    def fit(self, source: Iterable, transform: Optional[Callable] = None
            ) -> "StandardizeChannels":
        """Fits :math:`\\mu, \\sigma` on the face graphs (or batches) of ``source`` (a
        dataset or a ``DataLoader`` of the training split), each first passed through
        ``transform`` if given (the transforms before this one)."""
        total = total_square = None
        count = 0
        for data in tqdm(source, desc="fitting channel statistics", leave=False):
            data = transform(data) if transform is not None else data
            tokens = face_tokens(data, "StandardizeChannels.fit").double().flatten(0, 1)
            if total is None:
                total = torch.zeros(tokens.size(1), dtype=torch.float64)
                total_square = torch.zeros_like(total)
            elif tokens.size(1) != total.numel():
                raise ValueError(f"StandardizeChannels.fit: faces with {total.numel()} and "
                                 f"{tokens.size(1)} channels")
            total += tokens.sum(dim=0).cpu()
            total_square += tokens.square().sum(dim=0).cpu()
            count += tokens.size(0)
        if count < 2:
            raise ValueError("StandardizeChannels.fit: expected tokens of two faces or more")
        mean = total / count
        variance = (total_square - count * mean.square()).clamp(min=0) / (count - 1)
        self.mean, self.std = mean.float(), variance.sqrt().float().clamp(min=self.eps)
        return self

    def forward(self, data):
        if self.mean is None:
            raise ValueError("StandardizeChannels: call fit(training faces) or load_state_dict "
                             "before transforming")
        tokens = face_tokens(data, "StandardizeChannels")
        if tokens.size(-1) != self.mean.numel():
            raise ValueError(f"StandardizeChannels: fitted on {self.mean.numel()} channels, got "
                             f"tokens with {tokens.size(-1)}")
        data.tokens = (tokens - self.mean.to(tokens)) / self.std.to(tokens)
        return data

    def state_dict(self) -> Dict[str, Tensor]:
        """The fitted ``mean`` and ``std`` (``[C]`` each)."""
        if self.mean is None:
            raise ValueError("StandardizeChannels: not fitted, nothing to save")
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: Dict[str, Tensor]) -> "StandardizeChannels":
        """Restores what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or set(state) != {"mean", "std"}:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise KeyError(f"StandardizeChannels.load_state_dict: expected the keys "
                           f"['mean', 'std'], got {found}")
        mean, std = state["mean"], state["std"]
        if not isinstance(mean, Tensor) or mean.dim() != 1 or not isinstance(std, Tensor) \
                or std.shape != mean.shape or not bool((std > 0).all()):
            raise ValueError("StandardizeChannels.load_state_dict: expected 'mean' and 'std' as "
                             "[C] tensors with std > 0")
        self.mean, self.std = mean.float(), std.float()
        return self

    def __repr__(self) -> str:
        fitted = "unfitted" if self.mean is None else f"channels={self.mean.numel()}"
        return f"{self.__class__.__name__}({fitted})"
