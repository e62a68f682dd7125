"""Test-wide set-up: the shared references (``dense_reference``, ``pairs``, ``image_lists``) in
this folder are importable from the test folders that mirror the package."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
