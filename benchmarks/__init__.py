"""The benchmarks of pyg_mefl: run ``python -m benchmarks MODE`` from the repository root
(``__main__.py``: the driver and its modes; ``README.md``: the figures and their commands)."""
