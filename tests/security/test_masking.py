"""Masks cancel mod 2^64 for any dropout set of at most n - t; signs follow the id order."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.context import SessionContext
from security.errors import InvalidMessage
from security.key_agreement import AgreementPrivateKey, derive_mask_seed
from security.masking import PairwiseMask, apply_masks, pairwise_sign, remove_masks
from security.neighbours import neighbours, round_seed
from security.prg import MaskSeed, PrgAlgorithm


@settings(max_examples=20, deadline=None)
@given(data=st.data(), n=st.integers(3, 25), d=st.integers(1, 6), use_graph=st.booleans(),
       algorithm=st.sampled_from(list(PrgAlgorithm)))
def test_masks_cancel_for_any_dropout_set_up_to_n_minus_t(data: st.DataObject, n: int, d: int, use_graph: bool,
                                                           algorithm: PrgAlgorithm) -> None:
    # Prepare: sites with real X25519 mask keys, a graph, and inputs
    sites = [f"s{i:02d}" for i in range(n)]
    graph = neighbours(sites, k=4 if use_graph else 2 * n, round_seed=round_seed("fed", 1))
    t = n // 2 + 1
    dropped = set(data.draw(st.lists(st.sampled_from(sites), max_size=n - t, unique=True)))
    keys = {s: AgreementPrivateKey.generate() for s in sites}
    self_seeds = {s: MaskSeed.generate() for s in sites}
    inputs = {s: np.frombuffer(np.random.default_rng(i).bytes(8 * d), dtype=np.uint64).copy()
              for i, s in enumerate(sites)}

    def pair(u: str, v: str, owner: str) -> PairwiseMask:
        seed = derive_mask_seed(private_key=keys[u], peer_public_key=keys[v].public_key(),
                                context=SessionContext.pair("fed", 1, u, v))
        return PairwiseMask(seed, owner, v if owner == u else u)

    # Execute: survivors upload masked vectors; the server removes self masks and pairs with dropped sites
    survivors = [s for s in sites if s not in dropped]
    total = np.zeros(d, dtype=np.uint64)
    for s in survivors:
        masked = apply_masks(inputs[s].copy(), self_seed=self_seeds[s], algorithm=algorithm,
                             pairwise=[pair(s, v, s) for v in sorted(graph[s])])
        total += masked
    leftovers = [pair(u, v, v) for u in sorted(dropped) for v in sorted(graph[u]) if v not in dropped]
    remove_masks(total, self_seeds=[self_seeds[s] for s in survivors], pairwise=leftovers, algorithm=algorithm)
    # Assert
    expected = np.zeros(d, dtype=np.uint64)
    for s in survivors:
        expected += inputs[s]
    np.testing.assert_array_equal(total, expected)


def test_single_masked_vector_differs_from_input() -> None:
    # Prepare
    x = np.zeros(64, dtype=np.uint64)
    # Execute
    masked = apply_masks(x.copy(), self_seed=MaskSeed.generate(), pairwise=[], algorithm=PrgAlgorithm.CHACHA20)
    # Assert
    assert not np.array_equal(masked, x)


def test_sign_convention_and_validation() -> None:
    # Execute / Assert
    assert pairwise_sign("a", "b") == 1 and pairwise_sign("b", "a") == -1
    with pytest.raises(InvalidMessage):
        pairwise_sign("a", "a")
    with pytest.raises(InvalidMessage):
        apply_masks(np.zeros(3), self_seed=MaskSeed.generate(), pairwise=[],  # type: ignore[arg-type]
                    algorithm=PrgAlgorithm.CHACHA20)
    seed = MaskSeed.generate()
    with pytest.raises(InvalidMessage, match="single site"):
        apply_masks(np.zeros(3, dtype=np.uint64), self_seed=seed, algorithm=PrgAlgorithm.CHACHA20,
                    pairwise=[PairwiseMask(seed, "a", "b"), PairwiseMask(seed, "c", "b")])
