"""The benchmarks' FLOP count (``benchmarks/workloads.py``): every form of matrix product."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from workloads import count_flops, matrix_products  # noqa: E402


def test_count_flops_counts_in_place_and_out_products():
    a, b, c = torch.randn(6, 5), torch.randn(5, 4), torch.zeros(6, 4)
    batch_a, batch_b, batch_c = torch.randn(3, 6, 5), torch.randn(3, 5, 4), torch.zeros(3, 6, 4)

    def step():
        torch.mm(a, b)
        torch.addmm(c, a, b)
        c.clone().addmm_(a, b)                 # torch's FlopCounterMode counts no in-place form
        torch.mm(a, b, out=c.clone())
        torch.bmm(batch_a, batch_b)
        torch.baddbmm(batch_c, batch_a, batch_b)
        batch_c.clone().baddbmm_(batch_a, batch_b)
        torch.relu(a)                          # not a product

    assert count_flops(step) == 4 * (2 * 6 * 5 * 4) + 3 * (3 * 2 * 6 * 5 * 4)


def test_matrix_products_keep_the_operands_layout():
    a, b = torch.randn(6, 5), torch.randn(4, 5)
    batch_b = b.t().unsqueeze(0)
    calls = matrix_products(lambda: (a @ b.t(), a @ b.t(), torch.bmm(a[None], batch_b)))
    assert calls == {((6, 5), (5, 4), (5, 1), (1, 5)): 2,
                     ((1, 6, 5), (1, 5, 4), (30, 5, 1), batch_b.stride()): 1}
