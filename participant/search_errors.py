"""Refusals of the retrieval service, one line each (the CLI prints them; the server maps them to gRPC codes)."""
from __future__ import annotations


class ModelNotReady(Exception):
    """There is no usable model: no snapshot, or no completed round."""


class SearchRefused(Exception):
    """A search that cannot be answered correctly (wrong model version, bad query, k out of range)."""
