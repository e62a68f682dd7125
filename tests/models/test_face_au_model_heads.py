"""FaceAUModel trains either head: the stage-1 ANFL head on face graphs as MEFL does."""
import pytest
import torch
from torch_geometric.loader import DataLoader

from pyg_mefl import ANFL, MEFL, FaceAUModel, MEFLLoss, au_targets, face_graph
from pyg_mefl.train import au_relations, train_epoch

NUM_AUS, CHANNELS, TOKENS = 6, 12, 5


def _faces(count=10):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(count, TOKENS, CHANNELS, generator=generator)
    labels = torch.randint(0, 2, (count, NUM_AUS), generator=generator)
    return tokens, [face_graph(t, NUM_AUS, y) for t, y in zip(tokens, labels)]


def test_stage1_head_in_face_au_model_matches_the_head_and_trains():
    torch.manual_seed(0)
    tokens, faces = _faces()
    model = FaceAUModel(ANFL(CHANNELS, NUM_AUS, 0, neighbor_num=2))
    batch = next(iter(DataLoader(faces, batch_size=len(faces))))
    model.eval()
    out = model(batch)
    assert out.edge_attr is None and out.edge_logits is None
    torch.testing.assert_close(out.probs, model.head(tokens), rtol=1e-6, atol=1e-6)

    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = train_epoch(model, DataLoader(faces, batch_size=5), optimizer, MEFLLoss(), "cpu")
    assert loss > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "head.main_sc" in changed and any(k.startswith("head.gnn") for k in changed)
    probs = model(batch).probs
    assert probs.shape == (len(faces), NUM_AUS) and torch.isfinite(probs).all()
    assert au_targets(batch, NUM_AUS).shape == probs.shape


def test_au_relations_needs_a_mefl_head():
    _, faces = _faces(4)
    loader = DataLoader(faces, batch_size=4)
    with pytest.raises(TypeError, match="MEFL head.*ANFL"):
        au_relations(FaceAUModel(ANFL(CHANNELS, NUM_AUS, 0)), loader, "cpu")
    matrix, _ = au_relations(FaceAUModel(MEFL(CHANNELS, NUM_AUS, 0)), loader, "cpu")
    assert matrix.shape == (NUM_AUS, NUM_AUS) and torch.isfinite(matrix).all()
