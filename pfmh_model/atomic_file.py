"""Atomic file replacement for pfmh_model's writers: the project's one helper, ``durable.atomic_file``."""
from durable.atomic_file import atomic_path

__all__ = ["atomic_path"]
