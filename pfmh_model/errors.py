"""Exception classes of pfmh_model: one base class and narrow subclasses."""
from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by pfmh_model."""


class DataError(ModelError):
    """Input data has the wrong shape, dtype, orientation or content."""


class ConfigError(ModelError):
    """A model or training option is out of range or inconsistent."""


class OptionError(ConfigError, ValueError):
    """A constructor or config option is out of range (also a ValueError, so generic callers can catch it)."""


class StateMismatch(ModelError):
    """A model state, snapshot or flat parameter vector does not match the expected layout."""
