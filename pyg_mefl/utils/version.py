"""The package's version (also ``pyg_mefl.__version__``), kept where every layer may read it."""
__version__ = "0.1.0"
