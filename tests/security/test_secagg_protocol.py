"""End-to-end rounds: exact sums under random dropouts at every phase, aborts, and the server never
holding an individual unmasked (or, after two uploads, masked) vector."""
from __future__ import annotations

import inspect
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security import fixed_point
from security.errors import RoundAborted
from security.prg import PrgAlgorithm
from security.secagg_config import SecAggConfig
from security.secagg_server import SecAggServer
from tests.security.secagg_harness import Drops, Federation, Transcript, run_round

F, MAX = 16, 100.0


def _encoded(x: np.ndarray) -> np.ndarray:
    return fixed_point.encode(x, fraction_bits=F, max_abs=MAX)


def _reachable(obj: object, seen: set[int] | None = None) -> Iterator[object]:
    """Every object reachable from ``obj`` through attributes, slots and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, type | type(inspect) | int | float | str | bool) or obj is None:
        return
    seen.add(id(obj))
    yield obj
    children: list[object] = []
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif not isinstance(obj, np.ndarray | bytes | bytearray | memoryview):
        children = list(getattr(obj, "__dict__", {}).values())
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    children.append(getattr(obj, name))
    for child in children:
        yield from _reachable(child, seen)


def _assert_holds_no_individual_vector(server: SecAggServer, forbidden: list[np.ndarray]) -> None:
    blobs = [f.tobytes() for f in forbidden]
    for item in _reachable(server):
        if isinstance(item, np.ndarray):
            assert not any(item.shape == f.shape and np.array_equal(item, f) for f in forbidden)
        if isinstance(item, bytes | bytearray | memoryview):
            assert bytes(item) not in blobs


@settings(max_examples=20, deadline=None)
@given(data=st.data(), n=st.integers(3, 40), d=st.integers(1, 6), k=st.sampled_from([None, 2, 4]),
       algorithm=st.sampled_from(list(PrgAlgorithm)), compact=st.booleans())
def test_sum_is_exact_under_random_dropouts(data: st.DataObject, n: int, d: int, k: int | None,
                                            algorithm: PrgAlgorithm, compact: bool) -> None:
    # Prepare
    config = SecAggConfig(federation_id="fed", vector_length=d, fraction_bits=F, max_abs_value=MAX,
                          neighbours=k, prg=algorithm)
    plan = config.plan(n)
    fed = Federation.create(config, n)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    inputs = {s: rng.uniform(-MAX, MAX, d) for s in fed.sites}
    order = data.draw(st.permutations(fed.sites))
    budget = data.draw(st.integers(0, n))
    cuts = sorted(data.draw(st.lists(st.integers(0, budget), min_size=3, max_size=3)))
    dropped = order[:budget]
    drops = Drops(dropped[:cuts[0]], dropped[cuts[0]:cuts[1]], dropped[cuts[1]:cuts[2]], dropped[cuts[2]:])
    # Execute
    try:
        result = run_round(fed, 1, inputs, drops, compact=compact)
    except RoundAborted:
        result = None
    # Assert: within the tolerance bound the round must succeed; if it succeeds the sum is exact
    if drops.total() <= plan.holders - plan.threshold:
        assert result is not None
    if result is not None:
        assert set(result.survivors).isdisjoint(set(drops.advertise) | set(drops.share) | set(drops.masked))
        expected = np.zeros(d, dtype=np.uint64)
        for s in result.survivors:
            expected += _encoded(inputs[s])
        exact = fixed_point.decode(expected, fraction_bits=F)
        np.testing.assert_array_equal(result.total, exact)
        true_sum = sum(inputs[s] for s in result.survivors)
        assert np.max(np.abs(result.total - true_sum)) <= len(result.survivors) * 2.0 ** -(F + 1)


def test_too_many_dropouts_abort_without_a_sum() -> None:
    # Prepare: 6 sites, t = 4; three drop after sharing keys
    config = SecAggConfig(federation_id="fed", vector_length=3, fraction_bits=F, max_abs_value=MAX)
    fed = Federation.create(config, 6)
    inputs = {s: np.ones(3) for s in fed.sites}
    # Execute / Assert
    with pytest.raises(RoundAborted, match="3 sites sent masked inputs < threshold 4"):
        run_round(fed, 1, inputs, Drops(masked=fed.sites[:3]))
    with pytest.raises(RoundAborted, match="3 survivors signed the survivor set < threshold 4"):
        run_round(fed, 2, inputs, Drops(sign=fed.sites[:3]))
    with pytest.raises(RoundAborted, match="shares of"):
        run_round(fed, 4, inputs, Drops(unmask=fed.sites[:3]))
    # a survivor silent before it signs keeps its self seed hidden: nobody reveals it, the round aborts
    with pytest.raises(RoundAborted, match="shares of 'site-000''s self seed"):
        run_round(fed, 5, inputs, Drops(sign=fed.sites[:1]))
    with pytest.raises(RoundAborted, match="advertised keys < threshold"):
        run_round(fed, 6, inputs, Drops(advertise=fed.sites[:3]))


def test_consecutive_rounds_reuse_clients() -> None:
    # Prepare
    config = SecAggConfig(federation_id="fed", vector_length=2, fraction_bits=F, max_abs_value=MAX)
    fed = Federation.create(config, 5)
    # Execute
    first = run_round(fed, 1, {s: np.full(2, 1.5) for s in fed.sites}, Drops(masked=[fed.sites[0]]))
    second = run_round(fed, 2, {s: np.full(2, -2.0) for s in fed.sites}, Drops())
    # Assert
    np.testing.assert_array_equal(first.total, [6.0, 6.0])
    np.testing.assert_array_equal(second.total, [-10.0, -10.0])


def test_server_never_holds_an_individual_vector() -> None:
    # Prepare: 12 sites, dropouts at every phase; forbidden = every unmasked encoding and raw input
    config = SecAggConfig(federation_id="fed", vector_length=16, fraction_bits=F, max_abs_value=MAX,
                          neighbours=10, threshold=7)  # 11 holders per site: tolerates the 4 dropouts below
    fed = Federation.create(config, 12)
    rng = np.random.default_rng(7)
    inputs = {s: rng.uniform(-MAX, MAX, 16) for s in fed.sites}
    unmasked = [_encoded(x) for x in inputs.values()] + list(inputs.values())
    transcript = Transcript()
    checked: list[str] = []

    def inspect_server(phase: str, server: SecAggServer) -> None:
        forbidden = list(unmasked)
        if len(transcript.masked) >= 2:  # beyond the first upload no single masked vector is kept either
            forbidden += [m.vector() for m in transcript.masked.values()]
        _assert_holds_no_individual_vector(server, forbidden)
        checked.append(phase)

    # Execute
    result = run_round(fed, 1, inputs, Drops([fed.sites[0]], [fed.sites[1]], [fed.sites[2]], [fed.sites[3]]),
                       after_phase=inspect_server, transcript=transcript)
    # Assert
    assert checked == ["advertise", "share", "masked", "close_masked", "consistency", "unmask", "finish"]
    assert len(result.survivors) == 9


def test_server_api_cannot_take_an_unmasked_vector() -> None:
    # Prepare: every public method and its annotations
    methods = [m for name, m in inspect.getmembers(SecAggServer, inspect.isfunction) if not name.startswith("_")]
    # Execute
    annotations = [str(p.annotation) for m in methods for p in inspect.signature(m).parameters.values()]
    # Assert: inputs arrive only as MaskedInput (bytes of a masked vector), never as arrays
    assert methods and not any("ndarray" in a or "NDArray" in a or "float" in a for a in annotations)
    assert "MaskedInput" in " ".join(annotations)
