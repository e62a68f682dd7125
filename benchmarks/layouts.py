"""What the facts a face graph records (``GraphLayout``) buy on PyG ``Batch`` input.

Run ``python -m benchmarks layouts`` (results in ``benchmarks/results/layouts.json``). For each
kind of face graph, B faces of N = 27 AUs (+ 14
sub AUs), D = 49, C = 512, the same model runs the same ``Batch`` with the layout
``face_graph`` recorded, and with a copy whose layouts lack the
facts named by ``--without`` (default ``simple`` and ``ids_in_order``, the facts added last; the
copy then takes the paths it took before them), steps alternating in one process after a
warm-up step of each, so that both see the same machine load; medians are reported. Both runs
give the same numbers (checked: the largest relative difference of the probabilities is
recorded).

Graph kinds:
    ``complete``: ``face_graph(tokens, 27)``, the published graph (the tensor input's speed is
    timed alongside, as the reference point);
    ``knn-k``: each target's k most similar AUs (cosine similarity of the AU node features,
    self-loop included), k per target: a uniform in-degree;
    ``uneven-p``: each edge of the complete graph kept with probability p, edges shuffled: no
    uniform in-degree, the generic gathers and scatters.
"""
from .measure import alternate, medians
from .workloads import CHANNELS, TOKENS, build, knn_edge_index, make_step, sub_aus

__all__ = ["add_arguments", "run"]

NUM_AUS = 27


def graphs(kind: str, model, x):
    """The faces of ``x`` as a ``Batch`` of face graphs of this kind."""
    import torch
    from pyg_mefl import face_graph
    from torch_geometric.data import Batch
    generator = torch.Generator().manual_seed(0)
    faces = []
    for b, tokens in enumerate(x):
        if kind == "complete":
            faces.append(face_graph(tokens, NUM_AUS))
            continue
        if kind.startswith("knn-"):
            with torch.no_grad():
                model.eval()
                au_id, face = torch.arange(NUM_AUS), torch.zeros(NUM_AUS, dtype=torch.long)
                nodes = model.afg(tokens.unsqueeze(0), au_id, face).mean(dim=1)
            edge_index = knn_edge_index(nodes, int(kind.split("-")[1]))
        else:
            keep = float(kind.split("-")[1])
            from pyg_mefl import complete_au_graph
            edge_index = complete_au_graph(NUM_AUS)
            edge_index = edge_index[:, torch.rand(edge_index.size(1), generator=generator) < keep]
            edge_index = edge_index[:, torch.randperm(edge_index.size(1), generator=generator)]
        faces.append(face_graph(tokens, NUM_AUS, edge_index=edge_index))
    return Batch.from_data_list(faces)


def without(batch, facts):
    """A copy of ``batch`` whose graph layouts do not state ``facts``."""
    copy = batch.clone()
    copy.graph_layout = [layout._replace(**{fact: False for fact in facts})
                         for layout in batch.graph_layout]
    return copy


def run_graph(kind: str, mode: str, faces: int, facts, repeats: int) -> dict:
    import torch
    model, x = build("pyg", faces, NUM_AUS)
    batch = graphs(kind, model, x)
    inputs = {"with": batch, "without": without(batch, facts)}
    if kind == "complete":
        inputs["tensor"] = x
    steps = {name: make_step(model, value, mode) for name, value in inputs.items()}
    model.eval()
    with torch.no_grad():
        probs = [model(inputs[name]) for name in ("with", "without")]
    error = float((probs[0] - probs[1]).abs().max() / probs[1].abs().max())
    for step in steps.values():
        step()
    step_s = medians(alternate(steps, repeats))
    row = {"graph": kind, "mode": mode, "B": faces, "edges": int(batch.edge_index.size(1)),
           "layout": dict(batch.graph_layout[0]._asdict()), "rel_difference": error}
    row.update({f"{name}_ms": 1000 * seconds for name, seconds in step_s.items()})
    row["speedup"] = row["without_ms"] / row["with_ms"]
    return row


def add_arguments(parser) -> None:
    parser.add_argument("--graphs", default="complete,knn-4,uneven-0.15,uneven-0.4,uneven-0.9")
    parser.add_argument("--modes", default="eval,train")
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--without", default="simple,ids_in_order",
                        help="facts the baseline copy does not state (comma-separated)")
    parser.add_argument("--repeats", type=int, default=7)


def run(args, log) -> dict:
    facts = [fact for fact in args.without.split(",") if fact]
    result = {"without": facts, "N": NUM_AUS, "S": sub_aus(NUM_AUS), "D": TOKENS, "C": CHANNELS,
              "rows": []}
    print("| graph | mode | edges | with layout | without | speed-up | tensor input |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.graphs.split(","):
        for mode in args.modes.split(","):
            row = run_graph(kind, mode, args.faces, facts, args.repeats)
            result["rows"].append(row)
            tensor = f"{row['tensor_ms']:.0f} ms" if "tensor_ms" in row else ""
            print(f"| {kind} | {mode} | {row['edges']} | {row['with_ms']:.0f} ms | "
                  f"{row['without_ms']:.0f} ms | {row['speedup']:.2f}x | {tensor} |", flush=True)
    return result
