"""Helpers shared by every layer of the package: typed input checks."""
