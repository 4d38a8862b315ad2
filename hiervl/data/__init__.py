"""HierVL data: dataset registration (``datasets/``) and dataset mappers."""

from . import datasets  # noqa: F401  (registers the built-in dataset names)
