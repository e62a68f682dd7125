"""Token transforms against their definitions written out per face and per channel."""
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import Compose

from pyg_mefl import SyntheticFaceDataset, TokenFaceDataset, face_graph
from pyg_mefl.transforms import (AddTokenPosition, CenterTokens, StandardizeChannels,
                                 StandardizeTokens, TokenNorm, load_token_norm)


def _faces(num_faces=5, num_tokens=7, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.1, 1.0, 30.0])[:channels]
    return torch.randn(num_faces, num_tokens, channels, generator=generator) * scale + 4.0


def _graphs(tokens):
    return [face_graph(face, num_aus=3) for face in tokens]


def test_center_tokens_subtracts_each_faces_mean_token():
    tokens = _faces()
    batch = CenterTokens()(Batch.from_data_list(_graphs(tokens)))
    for face in range(tokens.size(0)):
        for token in range(tokens.size(1)):
            expected = tokens[face, token] - sum(tokens[face, d] for d in range(tokens.size(1))) \
                / tokens.size(1)
            torch.testing.assert_close(batch.tokens[face, token], expected)


def test_transforms_leave_the_input_unchanged_and_compose():
    tokens = _faces()
    data = face_graph(tokens[0], num_aus=3)
    before = data.tokens.clone()
    out = Compose([CenterTokens(), AddTokenPosition()])(data)
    assert torch.equal(data.tokens, before)
    assert out.tokens.shape == (1, 7, 3 + 7)
    torch.testing.assert_close(out.tokens[0, :, 3:], 3 ** 0.5 * torch.eye(7))  # sqrt(C)
    torch.testing.assert_close(out.tokens[0, :, :3], before[0] - before[0].mean(0))
    assert repr(CenterTokens()) == "CenterTokens()"
    torch.testing.assert_close(AddTokenPosition(scale=1.0)(data).tokens[0, :, 3:], torch.eye(7))
    with pytest.raises(ValueError, match="scale"):
        AddTokenPosition(scale=0)


def test_standardize_tokens_unit_rms_per_face_and_zero_face_stays_zero():
    tokens = _faces(num_faces=4, num_tokens=5)
    tokens[2] = 1.5  # all tokens equal: nothing to scale
    out = StandardizeTokens()(Data(tokens=tokens)).tokens
    for face in (0, 1, 3):
        centred = tokens[face] - tokens[face].mean(0)
        rms = (centred.square().sum() / centred.numel()).sqrt()
        torch.testing.assert_close(out[face], centred / rms, atol=1e-5, rtol=1e-4)
    assert torch.equal(out[2], torch.zeros(5, 3))


def test_standardize_channels_fits_training_statistics_from_a_dataset_or_a_loader():
    tokens = _faces(num_faces=9, num_tokens=4)
    dataset = TokenFaceDataset(tokens, torch.zeros(9, 2, dtype=torch.long))
    flat = tokens.reshape(-1, 3).double()
    mean = flat.mean(0)
    std = ((flat - mean).square().sum(0) / (flat.size(0) - 1)).sqrt()
    from_dataset = StandardizeChannels().fit(dataset)
    from_loader = StandardizeChannels().fit(DataLoader(dataset, batch_size=4))
    for fitted in (from_dataset, from_loader):
        torch.testing.assert_close(fitted.mean, mean.float())
        torch.testing.assert_close(fitted.std, std.float())
    out = from_dataset(Data(tokens=tokens)).tokens.reshape(-1, 3)
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(0), torch.ones(3), atol=1e-5, rtol=0)


def test_standardize_channels_errors_name_the_problem():
    with pytest.raises(ValueError, match="call fit"):
        StandardizeChannels()(Data(tokens=_faces()))
    fitted = StandardizeChannels().fit([Data(tokens=_faces())])
    with pytest.raises(ValueError, match="fitted on 3 channels, got tokens with 5"):
        fitted(Data(tokens=torch.randn(2, 4, 5)))
    with pytest.raises(KeyError, match="'mean', 'std'"):
        StandardizeChannels().load_state_dict({"mean": torch.zeros(3)})
    with pytest.raises(ValueError, match="expected tokens of two faces"):
        StandardizeChannels().fit([])
    with pytest.raises(ValueError, match="expected a face graph with float 'tokens'"):
        CenterTokens()(Data(image=torch.zeros(1, 3, 8, 8)))


@pytest.mark.parametrize("name,channels", [("none", 3), ("center", 3), ("standardize", 3),
                                           ("channels", 3), ("center+channels", 3),
                                           ("center+channels+position", 10)])
def test_token_norm_recipes_fit_in_order_and_round_trip_through_a_checkpoint(name, channels,
                                                                             tmp_path):
    tokens = _faces(num_faces=8)
    token_norm = TokenNorm(name)
    assert token_norm.needs_fit == ("channels" in name)
    token_norm.fit([Data(tokens=tokens)])
    out = token_norm(Data(tokens=tokens)).tokens
    assert out.shape == (8, 7, channels)
    if name.startswith("center+channels"):  # channel statistics of the centred faces
        centred = (tokens - tokens.mean(1, keepdim=True)).reshape(-1, 3)
        torch.testing.assert_close(out[..., :3].reshape(-1, 3),
                                   (centred - centred.mean(0)) / centred.std(0),
                                   atol=1e-4, rtol=1e-4)
    path = tmp_path / "best.pt"
    torch.save({"model": {}, "token_norm": token_norm.state_dict()}, path)
    for source in (path, torch.load(path, weights_only=True)):
        rebuilt = load_token_norm(source)
        assert repr(rebuilt) == f"TokenNorm({name!r})"
        assert torch.equal(rebuilt(Data(tokens=tokens)).tokens, out)
    older = {key: value for key, value in token_norm.state_dict().items() if key != "version"}
    if "position" in name:  # saved before the position code was scaled: refused, not misread
        with pytest.raises(KeyError, match="earlier pyg_mefl"):
            TokenNorm.from_state_dict(older)
    else:
        assert torch.equal(TokenNorm.from_state_dict(older)(Data(tokens=tokens)).tokens, out)


def test_token_norm_names_and_checkpoints_without_one(tmp_path):
    for bad in ("centre", "center+center", "", "none+center"):
        with pytest.raises(ValueError, match="token_norm: expected 'none' or distinct steps"):
            TokenNorm(bad)
    with pytest.raises(TypeError, match="expected a str"):
        TokenNorm(None)
    published = tmp_path / "published.pt"
    torch.save({"model": {}}, published)
    assert load_token_norm(published) is None  # published checkpoints carry none
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_token_norm(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(published.read_bytes()[:20])
    with pytest.raises(ValueError, match="truncated.pt: not a readable checkpoint"):
        load_token_norm(truncated)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: expected a checkpoint dict, got list"):
        load_token_norm(tmp_path / "list.pt")
    with pytest.raises(KeyError, match="expects statistics for steps"):
        load_token_norm({"token_norm": {"name": "channels", "steps": {}}})


def test_a_dataset_applies_the_transform_to_every_face():
    dataset = SyntheticFaceDataset(20, num_aus=12, num_tokens=4, channels=8, seed=1,
                                   transform=CenterTokens())
    for data in DataLoader(dataset, batch_size=6):
        torch.testing.assert_close(data.tokens.mean(1), torch.zeros(data.num_graphs, 8),
                                   atol=1e-5, rtol=0)
