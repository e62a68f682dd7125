"""The benchmarks' shared machinery: the FLOP count (``benchmarks/workloads.py``, every form of
matrix product), the alternating timer, the configurations, and the driver's suites and result
files."""
import argparse
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import MODES, RESULTS, parse_args, suite_name
from benchmarks.measure import alternate
from benchmarks.workloads import count_flops, matrix_products, parse_configs


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


def test_alternate_takes_the_steps_in_turn():
    order = []
    steps = {"dense": lambda: order.append("dense"), "pyg": lambda: order.append("pyg")}
    measured = alternate(steps, 3, measure=lambda step: (step(), len(order))[1])
    assert order == ["dense", "pyg"] * 3
    assert measured == {"dense": [1, 3, 5], "pyg": [2, 4, 6]}


def test_configs_are_mode_faces_aus():
    assert parse_configs("eval:8x27,train:32x12") == [("eval", 8, 27), ("train", 32, 12)]
    for bad in ("eval:8", "test:1x8", "eval:8x", "eval-8x27"):
        with pytest.raises(argparse.ArgumentTypeError, match="mode:BxN"):
            parse_configs(bad)


@pytest.mark.parametrize("argv, suite", [
    (["head"], "head-full"), (["head", "--quick"], "head-quick"),
    (["head", "--configs", "eval:8x27"], "head"),
    (["head", "--grid-only", "--compiled"], "head-compiled"),
    (["cuda", "--compiled"], "cuda-compiled"), (["cuda", "--device", "cpu"], "cuda-on-cpu"),
    (["bounds", "--batch", "2"], "bounds"),
])
def test_the_options_name_the_suite(argv, suite):
    mode, module, args = parse_args(argv)
    assert suite_name(mode, module, args) == suite


def test_an_unknown_mode_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["bench_mefl"])
    assert "invalid choice: 'bench_mefl'" in capsys.readouterr().err


def test_every_result_file_is_the_latest_run_of_a_mode():
    files = sorted(Path(RESULTS).glob("*"))
    assert files, RESULTS
    for path in files:
        assert path.suffix == ".json" and any(
            path.stem == mode or path.stem.startswith(mode + "-") for mode in MODES), path.name
