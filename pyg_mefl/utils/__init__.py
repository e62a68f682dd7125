"""Helpers shared by every layer of the package: typed input checks, and the registry through
which the heads' checkpoint methods reach their loaders."""
