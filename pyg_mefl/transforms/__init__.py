"""Transforms of face graphs, composable with ``torch_geometric.transforms.Compose``: token
normalisations, the token position, and the named recipes that training saves in checkpoints."""
from .add_token_position import AddTokenPosition
from .center_tokens import CenterTokens
from .standardize_channels import StandardizeChannels
from .standardize_tokens import StandardizeTokens
from .token_norm import TOKEN_NORM_STEPS, TokenNorm, load_token_norm

__all__ = ["AddTokenPosition", "CenterTokens", "StandardizeChannels", "StandardizeTokens",
           "TOKEN_NORM_STEPS", "TokenNorm", "load_token_norm"]
