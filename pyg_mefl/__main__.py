"""``python -m pyg_mefl predict ...``: see :mod:`pyg_mefl.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
