"""The package layout: public names, subpackage paths, and imports that only point downwards."""
import ast
import importlib
import pathlib

import pytest

import pyg_mefl

PACKAGE = pathlib.Path(pyg_mefl.__file__).parent
# Lower layers first: a module may import, at module level, only from its own layer or below.
LAYERS = {"utils": 0, "data": 1, "io": 1, "transforms": 1, "nn": 2, "pretrained": 3, "models": 4,
          "faces": 5, "train": 5, "cli": 6, "testing": 7}
# Names the first release exported from the top level (they must stay there).
FIRST_RELEASE = [
    "AUFeatureBlocks", "AUMetrics", "BP4D_AUS", "CrossAttention", "DISFA_AUS", "FaceAUModel",
    "FaceGraphDataset", "GatedGNN", "GatedGNNLayer", "GraphEdgeModel", "ImageListFaceDataset",
    "LinearBlock", "MEFL", "MEFLLoss", "MEFLOutput", "OPENGRAPHAU_MAIN_AUS",
    "OPENGRAPHAU_SUB_AUS", "ResNet50Tokens", "SlotBatchNorm", "SmallCNN", "SyntheticFaceDataset",
    "TokenFaceDataset", "WeightedAsymmetricLoss", "au_class_weights", "au_targets",
    "build_backbone", "complete_au_graph", "edge_slots", "face_graph", "fit", "gather_matmul",
    "relation_labels", "vocabulary_ids",
]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _module_level_imports(name, path):
    """Modules of pyg_mefl that ``name`` imports at module level (not inside functions)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[:len(name.split(".")) - node.level + is_package]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("pyg_mefl"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyg_mefl"))
    modules = dict(_modules())
    return {m for m in found if m in modules and m != name}


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


@pytest.mark.parametrize("name", FIRST_RELEASE)
def test_first_release_names_stay_at_the_top(name):
    assert name in pyg_mefl.__all__ and getattr(pyg_mefl, name) is not None


@pytest.mark.parametrize("subpackage", sorted(n for n in LAYERS if (PACKAGE / n).is_dir()))
def test_subpackage_names_are_the_top_level_objects(subpackage):
    module = importlib.import_module(f"pyg_mefl.{subpackage}")
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"pyg_mefl.{subpackage}.{name}"
        if name in pyg_mefl.__all__:
            assert getattr(pyg_mefl, name) is getattr(module, name)


def test_imports_point_downwards_and_have_no_cycles():
    graph = {name: _module_level_imports(name, path) for name, path in _modules()}
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if _layer(a) and _layer(b) and LAYERS[_layer(b)] > LAYERS[_layer(a)]]
    assert not upward, f"module-level imports from a higher layer: {upward}"
    # depth-first search for a cycle among the package's own modules, packages excluded (an
    # __init__ re-exporting its children is not a cycle of the code)
    modules = {n for n, p in _modules() if p.name != "__init__.py"}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in graph[node] & modules:
            assert state.get(target) != "open", f"import cycle: {path + [target]}"
            if target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(modules):
        if node not in state:
            visit(node, [node])
