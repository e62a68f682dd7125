"""The token tensor of a face graph, checked once for every token transform."""
from torch import Tensor


def face_tokens(data, transform: str) -> Tensor:
    """``data.tokens`` (``[B, D, C]``, ``B = 1`` for one face graph), or a :class:`ValueError`
    naming ``transform`` where the graph carries no tokens (e.g. an image that a backbone turns
    into tokens inside the model)."""
    tokens = getattr(data, "tokens", None)
    if tokens is None or tokens.dim() != 3 or not tokens.is_floating_point():
        shape = None if tokens is None else list(tokens.shape)
        raise ValueError(f"{transform}: expected a face graph with float 'tokens' [B, D, C], got "
                         f"{shape} (token transforms apply to token features, not to images)")
    return tokens
