"""SecAgg+ graph: k-regular, symmetric, deterministic per round seed, full graph for small cohorts."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.errors import InvalidMessage, UnsafeConfiguration
from security.neighbours import default_neighbours, neighbourhood_size, neighbours, round_seed


def _connected(graph: dict[str, frozenset[str]]) -> bool:
    start = next(iter(graph))
    seen, todo = {start}, [start]
    while todo:
        for peer in graph[todo.pop()] - seen:
            seen.add(peer)
            todo.append(peer)
    return len(seen) == len(graph)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 80), half_k=st.integers(1, 10), rnd=st.integers(0, 1000))
def test_graph_is_k_regular_symmetric_and_connected(n: int, half_k: int, rnd: int) -> None:
    # Prepare
    k = 2 * half_k
    sites = [f"s{i}" for i in range(n)]
    # Execute
    graph = neighbours(sites, k=k, round_seed=round_seed("fed", rnd))
    # Assert
    assert set(graph) == set(sites)
    for site, peers in graph.items():
        assert site not in peers
        assert len(peers) == min(k, n - 1) == neighbourhood_size(n, k) - 1
        assert all(site in graph[p] for p in peers)
    assert _connected(graph)


def test_graph_is_deterministic_order_free_and_changes_per_round() -> None:
    # Prepare
    sites = [f"s{i}" for i in range(50)]
    # Execute
    one = neighbours(sites, k=6, round_seed=round_seed("fed", 1))
    again = neighbours(list(reversed(sites)), k=6, round_seed=round_seed("fed", 1))
    other_round = neighbours(sites, k=6, round_seed=round_seed("fed", 2))
    other_fed = neighbours(sites, k=6, round_seed=round_seed("fed-2", 1))
    # Assert
    assert one == again
    assert one != other_round and one != other_fed


def test_small_cohort_gives_the_full_graph() -> None:
    # Prepare / Execute
    graph = neighbours(["a", "b", "c", "d"], k=4, round_seed=round_seed("fed", 0))
    # Assert
    assert graph["a"] == {"b", "c", "d"}


def test_default_degree() -> None:
    # Execute / Assert
    assert [default_neighbours(n) for n in (2, 3, 10, 100, 500, 1000)] == [2, 4, 8, 14, 18, 20]
    with pytest.raises(UnsafeConfiguration):
        default_neighbours(1)


def test_invalid_arguments_raise() -> None:
    # Prepare
    seed = round_seed("fed", 0)
    # Execute / Assert
    with pytest.raises(UnsafeConfiguration):
        neighbours(["a", "b", "c"], k=3, round_seed=seed)
    with pytest.raises(UnsafeConfiguration):
        neighbours(["a", "b", "c"], k=0, round_seed=seed)
    with pytest.raises(InvalidMessage):
        neighbours(["a", "a", "c"], k=2, round_seed=seed)
    with pytest.raises(InvalidMessage):
        neighbours(["a", "b", "c"], k=2, round_seed=b"short")
