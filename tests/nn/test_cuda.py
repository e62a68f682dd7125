"""Device-agnostic code: the same numbers on CUDA as on the CPU (skipped without a GPU)."""
import pytest
import torch

from pairs import make_pair, relative_error
from pyg_mefl import face_graph
from torch_geometric.data import Batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cuda_matches_dense_reference_on_cpu(training):
    dense, model = make_pair(32, 27, 14, "post", False, seed=0)
    dense.train(training)
    model = model.cuda().train(training)
    tokens = torch.randn(4, 9, 32)
    x = tokens.cuda().requires_grad_()
    probs = model(x)
    probs.sum().backward()
    x_ref = tokens.clone().requires_grad_()
    ref = dense(x_ref)["probs"]
    ref.sum().backward()
    assert probs.device.type == "cuda"
    assert relative_error(probs.cpu(), ref) < 1e-4
    assert relative_error(x.grad.cpu(), x_ref.grad) < 1e-4
    if training:
        running = model.gem.norm.running_var.cpu()
        expected = dense.edge_extractor.bn.running_var
        assert relative_error(running, expected) < 1e-4


def test_cuda_batch_of_face_graphs_and_bf16_autocast():
    _, model = make_pair(32, 12, 0, "pre", True, seed=1)
    model = model.cuda().eval()
    tokens = torch.randn(3, 9, 32, device="cuda")
    batch = Batch.from_data_list([face_graph(t, 12) for t in tokens])
    torch.testing.assert_close(model(batch), model(tokens))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        probs = model(tokens)
    assert torch.isfinite(probs).all()
    assert relative_error(probs.float(), model(tokens)) < 5e-2
