"""The package layout: public names, subpackage paths, and imports that only point downwards."""
import ast
import importlib
import pathlib

import pytest

import pyg_mefl

PACKAGE = pathlib.Path(pyg_mefl.__file__).parent
# Lower layers first: a module may import, at module level and inside functions, only from its
# own layer or below. The package's own __init__ and __main__ sit above every layer.
LAYERS = {"utils": 0, "data": 1, "io": 1, "transforms": 1, "nn": 2, "pretrained": 3, "models": 4,
          "faces": 5, "train": 5, "cli": 6, "testing": 7}
ABOVE_THE_LAYERS = max(LAYERS.values()) + 1
# Names the first release exported from the top level (they must stay importable from there).
FIRST_RELEASE = [
    "AUFeatureBlocks", "AUMetrics", "BP4D_AUS", "CrossAttention", "DISFA_AUS", "FaceAUModel",
    "FaceGraphDataset", "GatedGNN", "GatedGNNLayer", "GraphEdgeModel", "ImageListFaceDataset",
    "LinearBlock", "MEFL", "MEFLLoss", "MEFLOutput", "OPENGRAPHAU_MAIN_AUS",
    "OPENGRAPHAU_SUB_AUS", "ResNet50Tokens", "SlotBatchNorm", "SmallCNN", "SyntheticFaceDataset",
    "TokenFaceDataset", "WeightedAsymmetricLoss", "au_class_weights", "au_targets",
    "build_backbone", "complete_au_graph", "edge_slots", "face_graph", "fit", "gather_matmul",
    "relation_labels", "vocabulary_ids",
]
# Kernels and internals of the first release: still importable from the top for code that has
# them, but no longer part of the top level's public names; their home is their folder.
TOP_LEVEL_ALIASES = {"gather_matmul": "pyg_mefl.nn"}
# Layers below the checkpoint loaders reach them only through pyg_mefl.utils.registry.
BELOW_THE_LOADERS = sorted(n for n, layer in LAYERS.items() if layer < LAYERS["pretrained"])


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(name, path):
    """Modules of pyg_mefl that ``name`` imports anywhere: at module level, inside functions
    and methods, and under conditions. ``from package import name`` imports the submodule
    ``name`` if there is one, else the package itself."""
    modules = dict(_modules())
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[:len(name.split(".")) - node.level + is_package]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _layer(module):
    """The layer number of a module of pyg_mefl."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else ABOVE_THE_LAYERS


@pytest.mark.parametrize("name", FIRST_RELEASE)
def test_first_release_names_stay_at_the_top(name):
    namespace = {}
    exec(f"from pyg_mefl import {name}", namespace)
    assert namespace[name] is not None
    if name in TOP_LEVEL_ALIASES:
        home = importlib.import_module(TOP_LEVEL_ALIASES[name])
        assert name not in pyg_mefl.__all__ and namespace[name] is getattr(home, name)
    else:
        assert name in pyg_mefl.__all__


@pytest.mark.parametrize("subpackage", sorted(n for n in LAYERS if (PACKAGE / n).is_dir()))
def test_subpackage_names_are_the_top_level_objects(subpackage):
    module = importlib.import_module(f"pyg_mefl.{subpackage}")
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"pyg_mefl.{subpackage}.{name}"
        if hasattr(pyg_mefl, name):
            assert getattr(pyg_mefl, name) is getattr(module, name), f"pyg_mefl.{name}"


def _through_packages(name, graph, packages):
    """What importing ``graph[name]`` runs: packages replaced by what their ``__init__``
    imports."""
    found, pending, seen = set(), list(graph[name]), set()
    while pending:
        target = pending.pop()
        if target in seen:
            continue
        seen.add(target)
        if target in packages:
            pending.extend(graph[target])
        else:
            found.add(target)
    return found


def test_imports_point_downwards_and_have_no_cycles():
    graph = {name: _imports(name, path) for name, path in _modules()}
    upward = sorted((a, b) for a, targets in graph.items() for b in targets
                    if _layer(b) > _layer(a))
    assert not upward, f"imports from a higher layer: {upward}"
    # depth-first search for a cycle among the package's own modules; an __init__ re-exporting
    # its children is not a cycle, but a module importing a package depends on its children
    packages = {n for n, p in _modules() if p.name == "__init__.py"}
    runs = {n: _through_packages(n, graph, packages) for n in graph if n not in packages}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(runs[node]):
            if state.get(target) == "open":
                pytest.fail(f"import cycle: {path[path.index(target):] + [target]}")
            if target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(runs):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("layer", BELOW_THE_LOADERS)
def test_layers_below_the_loaders_do_not_name_them(layer):
    """An import by a computed name (importlib, sys.modules) escapes the import graph above: the
    layers below pretrained/ must not name it at all, except in the method name
    ``from_pretrained``, and reach its functions through pyg_mefl.utils.registry."""
    named = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        source = path.read_text().replace("from_pretrained", "")
        lines = [i for i, line in enumerate(source.splitlines(), 1) if "pretrained" in line]
        if lines:
            named[str(path.relative_to(PACKAGE.parent))] = lines
    assert not named, f"'pretrained' named on these lines: {named}"
