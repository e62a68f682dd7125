"""The layers' checkpoint methods run the loaders of pyg_mefl.pretrained through
pyg_mefl.utils.registry: which function runs, with which class, and the errors."""
import os
import subprocess
import sys

import pytest
import torch

import pyg_mefl
from pyg_mefl import ANFL, MEFL
from pyg_mefl.utils import registry

METHODS = ["MEFL.from_pretrained", "MEFL.to_published_state_dict", "ANFL.from_pretrained",
           "ANFL.to_published_state_dict"]


class TaggedMEFL(MEFL):
    """A user's subclass: loading it must build it, not a plain MEFL."""


class TaggedANFL(ANFL):
    """A user's subclass: loading it must build it, not a plain ANFL."""


def _recorders(monkeypatch):
    """Replace every registered method body by one that records its call and returns its name."""
    calls = []

    def recorder(name):
        def record(*args, **kwargs):
            calls.append((name, args, kwargs))
            return name
        return record

    for name in METHODS:
        monkeypatch.setitem(registry._FUNCTIONS, name, recorder(name))
    return calls


def test_methods_pass_their_arguments_and_class_to_the_registered_function(monkeypatch):
    calls = _recorders(monkeypatch)
    mefl, anfl = MEFL(8, 5, 0), ANFL(8, 5, 0)
    assert TaggedMEFL.from_pretrained("head.pth", "mexca") == "MEFL.from_pretrained"
    assert mefl.to_published_state_dict("me-graphau", True) == "MEFL.to_published_state_dict"
    assert ANFL.from_pretrained("head.pth", neighbor_num=2) == "ANFL.from_pretrained"
    assert anfl.to_published_state_dict("me-graphau") == "ANFL.to_published_state_dict"
    assert calls == [
        ("MEFL.from_pretrained", ("head.pth", "mexca", TaggedMEFL), {}),
        ("MEFL.to_published_state_dict", (mefl, "me-graphau", True), {}),
        ("ANFL.from_pretrained", ("head.pth", None, ANFL), {"neighbor_num": 2}),
        ("ANFL.to_published_state_dict", (anfl, "me-graphau"), {}),
    ]


def test_a_subclass_loads_as_itself_with_the_same_weights():
    torch.manual_seed(0)
    for base, tagged, layout, overrides in ((MEFL, TaggedMEFL, "mexca", {}),
                                            (ANFL, TaggedANFL, "opengraphau",
                                             {"neighbor_num": 2})):
        model = base(8, 27, 14)
        loaded = tagged.from_pretrained(model.to_published_state_dict(layout), layout,
                                        **overrides)
        assert type(loaded) is tagged
        expected, got = model.state_dict(), loaded.state_dict()
        assert list(got) == list(expected)
        assert all(torch.equal(got[key], expected[key]) for key in expected)
    assert loaded.neighbor_num == 2


CALLS = {  # each method, called with arguments its body would accept
    "MEFL.from_pretrained": lambda: MEFL.from_pretrained({}),
    "MEFL.to_published_state_dict": lambda: MEFL(8, 5, 0).to_published_state_dict("me-graphau"),
    "ANFL.from_pretrained": lambda: ANFL.from_pretrained({}),
    "ANFL.to_published_state_dict": lambda: ANFL(8, 5, 0).to_published_state_dict("me-graphau"),
}


@pytest.mark.parametrize("name", METHODS)
def test_an_unregistered_method_says_so(monkeypatch, name):
    monkeypatch.delitem(registry._FUNCTIONS, name)
    with pytest.raises(KeyError, match=f"{name}: no implementation is registered.*import "
                                       "pyg_mefl"):
        CALLS[name]()


def test_registration_refuses_a_second_implementation(monkeypatch):
    monkeypatch.setattr(registry, "_FUNCTIONS", {})

    def factory():
        def body(*args):
            return args
        return body

    def other(*args):
        return args

    first, same_code = factory(), factory()  # as a reloaded module defines it again
    registry.register_checkpoint_function("MEFL.from_pretrained", first)
    registry.register_checkpoint_function("MEFL.from_pretrained", same_code)
    assert registry.checkpoint_function("MEFL.from_pretrained") is same_code
    with pytest.raises(ValueError, match=r"MEFL.from_pretrained: already implemented by "
                                         r".*factory.<locals>.body, not registering .*other"):
        registry.register_checkpoint_function("MEFL.from_pretrained", other)
    assert registry.checkpoint_function("MEFL.from_pretrained") is same_code
    with pytest.raises(TypeError, match="MEFL.to_published_state_dict: expected a callable, "
                                        "got str"):
        registry.register_checkpoint_function("MEFL.to_published_state_dict", "load_mefl")


def test_importing_a_layer_alone_registers_the_loaders():
    """Python runs pyg_mefl/__init__ (which imports pretrained/) before any of its modules, so
    a program that imports only the layer still finds the loaders."""
    code = ("from pyg_mefl.nn.mefl import MEFL\n"
            "from pyg_mefl.utils.registry import checkpoint_function\n"
            f"for name in {METHODS!r}:\n"
            "    function = checkpoint_function(name)\n"
            "    print(name, function.__module__, function.__name__)\n")
    root = os.path.dirname(os.path.dirname(pyg_mefl.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["MEFL.from_pretrained pyg_mefl.pretrained.head load_mefl",
                   "MEFL.to_published_state_dict pyg_mefl.pretrained.head mefl_to_published",
                   "ANFL.from_pretrained pyg_mefl.pretrained.anfl load_anfl",
                   "ANFL.to_published_state_dict pyg_mefl.pretrained.anfl "
                   "anfl_head_to_published"]
