"""The ReLU gradients of pyg_mefl.nn.fused.activation (opaque operators, so that compiled
training stores no boolean masks) against autograd's own ReLU and batch norm."""
import pytest
import torch

from pyg_mefl.nn.fused.activation import batch_norm_relu_backward, relu

DTYPE = torch.float64


def test_relu_matches_torch_and_gradcheck():
    x = torch.randn(5, 7, dtype=DTYPE, requires_grad=True)
    x.data[0, :3] = 0.0  # ties at zero: no gradient, as torch.relu
    out = relu(x)
    assert torch.equal(out, torch.relu(x))
    grad = torch.randn_like(out)
    ours, = torch.autograd.grad(out, x, grad)
    theirs, = torch.autograd.grad(torch.relu(x), x, grad)
    assert torch.equal(ours, theirs)
    assert torch.autograd.gradcheck(relu, (torch.randn(4, 3, dtype=DTYPE, requires_grad=True),))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("stored_mask", [True, False], ids=["mask", "recomputed"])
def test_batch_norm_relu_backward_matches_autograd(affine, stored_mask):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, dtype=DTYPE, generator=generator, requires_grad=True)
    weight = torch.rand(6, dtype=DTYPE, generator=generator).add_(0.5).requires_grad_() \
        if affine else None
    bias = torch.randn(6, dtype=DTYPE, generator=generator).requires_grad_() if affine else None
    out = torch.relu(torch.nn.functional.batch_norm(x, None, None, weight, bias, True))
    grad = torch.randn(out.shape, dtype=DTYPE, generator=generator)
    inputs = (x,) + ((weight, bias) if affine else ())
    expected = torch.autograd.grad(out, inputs, grad)

    with torch.no_grad():
        normed, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.1,
                                                       1e-5)
        mask = normed > 0 if stored_mask else None
        grads = batch_norm_relu_backward(grad, x, weight, bias, mean, invstd, 1e-5, mask)
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-12, atol=1e-12)
    if affine:
        torch.testing.assert_close(grads[1], expected[1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[2], expected[2], rtol=1e-12, atol=1e-12)
    else:
        assert grads[1].numel() == grads[2].numel() == 0


def test_ops_trace_under_compile():
    """Both operators compile into one graph with their fake kernels (no graph break)."""
    x = torch.randn(3, 4, 5, requires_grad=True)

    def step(x):
        return relu(torch.nn.functional.batch_norm(x, None, None, training=True)).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grad, = torch.autograd.grad(loss, x)
    expected, = torch.autograd.grad(step(x), x)
    torch.testing.assert_close(grad, expected)
