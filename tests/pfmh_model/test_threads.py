"""The thread rule: one torch intra-op thread unless asked, the same default in every entry point."""
from __future__ import annotations

import os

import pytest
import torch

from pfmh_model.errors import OptionError
from pfmh_model.simulate_cli import build_parser
from pfmh_model.threads import DEFAULT_THREADS, set_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread() -> None:
    # Prepare: torch starts with one thread per core
    torch.set_num_threads(os.cpu_count() or 1)
    # Execute
    count = set_threads()
    # Assert
    assert DEFAULT_THREADS == 1
    assert count == 1 and torch.get_num_threads() == 1


def test_zero_means_one_per_core_and_bad_values_raise() -> None:
    assert set_threads(0) == (os.cpu_count() or 1) == torch.get_num_threads()
    assert set_threads(2) == 2 == torch.get_num_threads()
    for bad in (-1, 1.5, True):
        with pytest.raises(OptionError, match="threads="):
            set_threads(bad)  # type: ignore[arg-type]


def test_simulation_defaults_to_the_rule() -> None:
    assert build_parser().parse_args([]).threads == DEFAULT_THREADS
