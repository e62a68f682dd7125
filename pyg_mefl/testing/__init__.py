"""Independent reference formulations for checking pyg_mefl against the published code, as
``torch_geometric.testing`` serves PyG: the tests and the benchmarks import them from here, and
so can a user who wants to check a change or a port.

Nothing else in the package imports this module. Its submodules:

- :mod:`~pyg_mefl.testing.dense_reference`: the published MEFARG head in its batched dense form
  (every node tensor repeated over the N² AU pairs), written from the equations, and the
  published checkpoint layouts (``to_layout``, ``wrap``).
- :mod:`~pyg_mefl.testing.anfl_reference`: the published stage-1 ANFL head, dense.
- :mod:`~pyg_mefl.testing.pairs`: a :class:`~pyg_mefl.MEFL` and a dense head holding the same
  weights (``make_pair``), and the relative error the comparisons use.
- :mod:`~pyg_mefl.testing.published_models`: whole published models (torchvision and timm
  backbones, the dense heads) as the published code saves them, and references that run them.
- :mod:`~pyg_mefl.testing.face_reference`: mexca's face pipeline, written from facenet-pytorch's
  public API.

The backbones need the ``vision`` extra and the face pipeline the ``faces`` extra; they are
imported when used.
"""
from .anfl_reference import DenseANFL, to_anfl_layout
from .dense_reference import DenseLinearBlock, DenseMEFL, to_layout, wrap
from .pairs import make_pair, randomize_batchnorms, relative_error

__all__ = ["DenseANFL", "DenseLinearBlock", "DenseMEFL", "make_pair", "randomize_batchnorms",
           "relative_error", "to_anfl_layout", "to_layout", "wrap"]
