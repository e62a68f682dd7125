"""Device-agnostic code: the same numbers on CUDA as on the CPU, bf16 autocast, and no host sync on
the hot path (the device waits for nobody: no ``.item()``, ``bool(tensor)``, ``torch.equal`` or
blocking copy per call). The CUDA tests are skipped without a GPU; the fake-device test of the
forward pass runs everywhere."""
import pytest
import torch
import torch_geometric
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch_geometric.data import Batch

from pyg_mefl.testing.pairs import make_pair, relative_error
from pyg_mefl import MEFL, GatedGNNLayer, complete_au_graph, face_graph

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NUM_AUS, CHANNELS, TOKENS, SUB_AU_SOURCES = 12, 32, 9, [0, 4, 7]
KINDS = ["tokens", "complete graphs", "mixed graphs"]


def head() -> MEFL:
    torch.manual_seed(0)
    return MEFL(CHANNELS, NUM_AUS, len(SUB_AU_SOURCES), sub_au_sources=SUB_AU_SOURCES)


def model_inputs(device) -> dict:
    """Three faces as a tokens tensor and as PyG batches, built on the CPU as a ``DataLoader``
    gives them, then moved: complete graphs (the layout's fast paths) and mixed ones (a subset
    of the AUs, and a sparse graph of uneven in-degrees with unsorted targets: the generic
    gathers and scatters)."""
    tokens = torch.randn(3, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(0))
    sparse = torch.tensor([[0, 1, 2, 3, 5, 5, 11, 7], [1, 1, 1, 2, 2, 0, 4, 9]])
    complete = Batch.from_data_list([face_graph(t, NUM_AUS) for t in tokens])
    mixed = Batch.from_data_list([face_graph(tokens[0], NUM_AUS),
                                  face_graph(tokens[1], au_ids=[0, 3, 5, 11]),
                                  face_graph(tokens[2], NUM_AUS, edge_index=sparse)])
    return {"tokens": tokens.to(device), "complete graphs": complete.to(device),
            "mixed graphs": mixed.to(device)}


def uneven_graph(device):
    """Node features and a graph of 10 nodes with random in-degrees, edges in random order."""
    generator = torch.Generator().manual_seed(0)
    edge_index = complete_au_graph(10)
    edge_index = edge_index[:, torch.rand(100, generator=generator) < 0.4]
    edge_index = edge_index[:, torch.randperm(edge_index.size(1), generator=generator)]
    x = torch.randn(10, CHANNELS, generator=generator)
    edge_attr = torch.randn(edge_index.size(1), CHANNELS, generator=generator)
    return x.to(device), edge_index.to(device), edge_attr.to(device)


def step(model: MEFL, x, training: bool, bf16: bool = False) -> torch.Tensor:
    """An evaluation step, or a training step (forward, loss, backward), as a training loop runs
    them; with ``bf16`` the forward pass runs under bf16 autocast. Returns the probabilities."""
    model.train(training)
    autocast = torch.autocast(model.main_sc.device.type, dtype=torch.bfloat16, enabled=bf16)
    if not training:
        with torch.no_grad(), autocast:
            return model(x)
    model.zero_grad(set_to_none=True)
    with autocast:
        probs = model(x)
    # AUs a face graph does not hold are NaN: they carry no loss
    (-probs.float().nan_to_num(0.5).clamp(1e-8, 1.0).log().mean()).backward()
    return probs.detach()


def assert_no_host_sync(fn) -> None:
    """``fn`` runs without a synchronising CUDA call (torch raises at the call otherwise)."""
    fn()  # warm-up: lazy initialisation (library handles, workspaces) is not the hot path
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_forward_reads_no_values_on_a_gpu(training):
    """Fake CUDA tensors (no GPU needed) hold no values, so any read of one (``.item()``,
    ``bool``, ``torch.equal``, ``nonzero``) raises: a forward pass that runs on them would not
    wait for a real device. In PyG's debug mode the value checks read, and the test sees it.
    (The backward pass needs a real device: ``test_mefl_step_never_syncs_with_the_host``.)"""
    inputs, graph = model_inputs("cpu"), uneven_graph("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            model = head().train(training)
            layer = GatedGNNLayer(CHANNELS).train(training)
        for kind, x in inputs.items():
            probs = model(x.to("cuda"))
            assert probs.device.type == "cuda" and probs.shape == (3, NUM_AUS + 3), kind
        out, edges = layer(*(t.to("cuda") for t in graph))
        assert out.device.type == edges.device.type == "cuda"
        with torch_geometric.debug(), pytest.raises(DataDependentOutputException):
            model(inputs["tokens"].to("cuda"))


def test_training_step_reads_no_values_but_in_the_checks(monkeypatch):
    """The backward pass too: on fake CPU tensors (the autograd engine wants a real device for
    fake CUDA ones), with the value checks off as on a GPU, a whole training step (forward,
    loss, backward) and a layer on an uneven graph run without reading a value."""
    import pyg_mefl.data.graph
    import pyg_mefl.utils.checks
    for module in (pyg_mefl.utils.checks, pyg_mefl.data.graph):
        monkeypatch.setattr(module, "reads_values", lambda tensor: False)
    inputs, (x, edge_index, edge_attr) = model_inputs("cpu"), uneven_graph("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model, layer = head(), GatedGNNLayer(CHANNELS)
        for kind, x_in in inputs.items():
            assert step(model, x_in, True).shape == (3, NUM_AUS + 3), kind
        out, edges = layer(x.requires_grad_(), edge_index, edge_attr)
        (out.sum() + edges.sum()).backward()
        assert x.grad.shape == x.shape


@cuda
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


@cuda
def test_cuda_batch_of_face_graphs_and_bf16_autocast():
    _, model = make_pair(32, 12, 0, "pre", True, seed=1)
    model = model.cuda().eval()
    tokens = torch.randn(3, 9, 32)
    batch = Batch.from_data_list([face_graph(t, 12) for t in tokens]).to("cuda")
    tokens = tokens.cuda()
    torch.testing.assert_close(model(batch), model(tokens))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        probs = model(tokens)
    assert torch.isfinite(probs).all()
    assert relative_error(probs.float(), model(tokens)) < 5e-2


@cuda
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS)
def test_mefl_step_never_syncs_with_the_host(kind, training):
    model = head().cuda()
    x = model_inputs("cuda")[kind]
    assert_no_host_sync(lambda: step(model, x, training))


@cuda
def test_face_graph_of_gpu_tokens_lives_on_the_gpu():
    """A face graph built from GPU tokens (or a batch of them) runs without a ``.to()``: its
    nodes and default edges are made where the tokens are."""
    tokens = torch.randn(3, 9, 32, device="cuda")
    graphs = [face_graph(tokens[0], 12), face_graph(tokens[1], au_ids=[0, 3, 5])]
    assert all(g.au_id.device.type == g.edge_index.device.type == "cuda" for g in graphs)
    assert graphs[0].graph_layout.complete
    model = head().cuda().eval()
    probs = model(Batch.from_data_list(graphs))
    assert probs.device.type == "cuda"
    torch.testing.assert_close(probs[0], model(tokens[:1])[0])


@cuda
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gated_gnn_layer_on_an_uneven_graph_never_syncs(training):
    """The generic path: scatter softmax and aggregation, PyG's per-channel batch norm."""
    layer = GatedGNNLayer(CHANNELS).cuda().train(training)
    x, edge_index, edge_attr = uneven_graph("cuda")
    x.requires_grad_(training)

    def run():
        with torch.set_grad_enabled(training):
            out, edges = layer(x, edge_index, edge_attr)
        if training:
            (out.sum() + edges.sum()).backward()

    assert_no_host_sync(run)


@cuda
def test_debug_mode_checks_values_on_the_gpu_and_syncs():
    """Outside PyG's debug mode nothing reads values on the GPU (a NaN passes through); inside it,
    the value checks run as on the CPU, and they sync (the sync detector above would see it)."""
    model = head().cuda().eval()
    tokens = torch.randn(2, TOKENS, CHANNELS, device="cuda")
    tokens[1, 0, 0] = float("nan")
    with torch.no_grad():
        probs = model(tokens)
    assert torch.isfinite(probs[0]).all() and torch.isnan(probs[1]).all()
    data = face_graph(torch.randn(TOKENS, CHANNELS), NUM_AUS)
    data.edge_index = data.edge_index + 1
    with torch_geometric.debug():
        with pytest.raises(ValueError, match="tokens: 1 non-finite value"):
            model(tokens)
        with pytest.raises(ValueError, match=r"data.edge_index: node indices must lie in"):
            model(data.to("cuda"))
        torch.cuda.set_sync_debug_mode("error")
        try:
            with pytest.raises(RuntimeError, match="synchronizing CUDA operation"):
                model(tokens.nan_to_num())
        finally:
            torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("kind", ["tokens", "mixed graphs"])
def test_bf16_autocast_training_step(kind):
    model = head().cuda()
    x = model_inputs("cuda")[kind]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    reference = step(model, x, True)
    expected = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    model.load_state_dict(state)
    probs = step(model, x, True, bf16=True)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys()
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    # as a whole (single gradients that are ~0 in float32, e.g. of biases before a norm, are
    # noise in bf16): a cosine of 0.999 under CPU bf16 autocast at these sizes
    flat = [torch.cat([g[name].float().flatten() for name in expected]) for g in (grads, expected)]
    assert float(torch.nn.functional.cosine_similarity(*flat, dim=0)) > 0.98
    assert torch.equal(probs.isnan(), reference.isnan())
    assert relative_error(probs.float().nan_to_num(), reference.nan_to_num()) < 5e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_inference(kind, device):
    """Evaluation under ``torch.no_grad()`` and bf16 autocast, as an inference server runs it:
    the fast paths that work in place without autograd must accept autocast's mixed dtypes."""
    model = head().to(device)
    x = model_inputs(device)[kind]
    reference = step(model, x, False)
    probs = step(model, x, False, bf16=True)
    assert torch.equal(probs.isnan(), reference.isnan())
    assert relative_error(probs.float().nan_to_num(), reference.nan_to_num()) < 5e-2


def step_peak_bytes(module, fn) -> int:
    """Allocator peak of one call of ``fn`` over what was allocated before it (after a warm-up,
    with the gradients of ``module`` freed first: the step's own gradients count)."""
    fn()
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@cuda
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_step_peak_memory_far_below_the_dense_formulation(training):
    """The dense head lifts node tensors to ``[B, N^2, D, C]`` (here 4 * 144 * 9 * 64 float32
    values, 1.27 MiB), about 5 of them alive at its peak in evaluation and 9 in training; the
    graph head holds ``[E, C]`` edge tensors and ``[n, D, D]`` maps instead. Counted on the CPU
    with a live-storage tracker at this size (eval / train): dense 6.7 / 11.2 MiB (5.3 / 8.9
    lifted tensors), pyg_mefl 0.6 / 2.1 MiB, 10.6x / 5.4x less. Allocator peaks are
    deterministic: no timing in this assertion."""
    dense, model = make_pair(64, 12, 0, seed=0)
    tokens = torch.randn(4, TOKENS, 64, device="cuda")
    peaks = {}
    for name, module in (("dense", dense.cuda()), ("pyg", model.cuda())):
        def run(module=module):
            with torch.set_grad_enabled(training):
                out = module.train(training)(tokens)
            if training:
                (out["probs"] if isinstance(out, dict) else out).sum().backward()
        peaks[name] = step_peak_bytes(module, run)
    assert peaks["pyg"] < peaks["dense"] / 3, peaks


@cuda
def test_compiled_eval_equals_eager_on_cuda():  # last: the slowest (inductor compiles)
    _, model = make_pair(32, 12, 0, seed=2)
    model = model.cuda().eval()
    tokens = torch.randn(4, TOKENS, 32, device="cuda")
    with torch.no_grad():
        eager = model(tokens)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)(tokens)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
