"""``federation.round_codec``: the join reply, the round offer and the round result survive the wire unchanged,
in the ``pfmh.v1`` layout the daemons have always sent."""
from __future__ import annotations

import numpy as np
import pytest

from federation.plan import FederationSettings
from federation.round_codec import JoinAccepted, RoundOffer, RoundOutcome
from proto import federation_pb2 as pb
from proto.tensors import TensorError


def _wire(message):  # noqa: ANN001, ANN202 - through real protobuf bytes, as gRPC sends it
    return type(message).FromString(message.SerializeToString())


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(4, 16)), rng.normal(size=37)


def test_a_round_offer_round_trips_every_field_in_the_wire_layout() -> None:
    # Prepare
    prototypes, model = _arrays()
    offer = RoundOffer(status=pb.READY, federation_id="fed", completed_rounds=2, round=5,
                       cohort=("site-a", "site-b", "site-c"), threshold=2, neighbours=2, fraction_bits=20,
                       max_abs_value=64.0, vector_length=68, global_prototypes=prototypes, shared_model=model,
                       phase_timeout_s=7.5, train_timeout_s=30.0)
    # Execute
    message = _wire(offer.to_proto())
    back = RoundOffer.from_proto(message)
    # Assert: the same offer, and the fields where a plain protobuf reader finds them
    assert back == offer
    assert (back.round, back.cohort, back.threshold, back.neighbours) == (5, ("site-a", "site-b", "site-c"), 2, 2)
    assert (back.fraction_bits, back.max_abs_value, back.vector_length) == (20, 64.0, 68)
    assert (back.phase_timeout_s, back.train_timeout_s, back.completed_rounds) == (7.5, 30.0, 2)
    np.testing.assert_array_equal(back.global_prototypes, prototypes)
    np.testing.assert_array_equal(back.shared_model, model)
    assert list(message.global_prototypes.shape) == [4, 16]
    assert message.global_prototypes.float64_le == prototypes.astype("<f8").tobytes()
    assert list(message.shared_model.shape) == [37] and list(message.cohort) == ["site-a", "site-b", "site-c"]


def test_an_idle_offer_carries_no_round_and_no_tensors() -> None:
    # Prepare
    offer = RoundOffer(status=pb.FINISHED, federation_id="fed", completed_rounds=3)
    # Execute
    message = _wire(offer.to_proto())
    back = RoundOffer.from_proto(message)
    # Assert
    assert back == offer and back.global_prototypes is None and back.shared_model is None
    assert message.status == pb.FINISHED and not message.HasField("global_prototypes") and not message.cohort


def test_round_outcomes_round_trip_ready_and_aborted() -> None:
    # Prepare
    prototypes, model = _arrays()
    ready = RoundOutcome(status=pb.READY, round=5, completed_rounds=3, survivors=("site-a", "site-c"),
                         prototypes=prototypes, model=model)
    aborted = RoundOutcome(status=pb.ABORTED, round=6, completed_rounds=3, abort_reason="too few survivors")
    # Execute
    ready_message, aborted_message = _wire(ready.to_proto()), _wire(aborted.to_proto())
    ready_back, aborted_back = RoundOutcome.from_proto(ready_message), RoundOutcome.from_proto(aborted_message)
    # Assert: tensors, survivors and reason come back; an aborted round carries no state
    assert ready_back == ready and aborted_back == aborted and ready_back != aborted_back
    np.testing.assert_array_equal(ready_back.prototypes, prototypes)
    np.testing.assert_array_equal(ready_back.model, model)
    assert ready_back.survivors == ("site-a", "site-c") and ready_back.completed_rounds == 3
    assert list(ready_message.survivors) == ["site-a", "site-c"]
    assert ready_message.shared_model.float64_le == model.astype("<f8").tobytes()
    assert aborted_back.prototypes is None and aborted_back.model is None and not aborted_back.survivors
    assert aborted_message.abort_reason == "too few survivors"


def test_outcomes_with_different_prototypes_differ() -> None:
    prototypes, _ = _arrays()
    a = RoundOutcome(status=pb.READY, round=5, completed_rounds=3, prototypes=prototypes)
    assert a != RoundOutcome(status=pb.READY, round=5, completed_rounds=3, prototypes=prototypes + 1.0)
    assert a != RoundOutcome(status=pb.READY, round=5, completed_rounds=3)


def test_join_accepted_round_trips_settings_sites_and_ledger_head() -> None:
    # Prepare
    settings = FederationSettings(federation_id="fed", image_dim=8, text_dim=6, num_classes=4, rounds=7)
    joined = JoinAccepted(settings=settings, protocol_version=4, enrolled_sites=("site-b", "site-a"), next_round=9,
                          ledger_entries=12, ledger_head_hash="ab" * 32)
    # Execute
    message = _wire(joined.to_proto())
    back = JoinAccepted.from_proto(message)
    # Assert
    assert back == joined and back.ledger_head == (12, "ab" * 32)
    assert back.settings.rounds == 7 and back.next_round == 9
    assert message.federation_id == "fed" and message.settings_json == settings.to_json()
    assert list(message.enrolled_sites) == ["site-b", "site-a"] and message.protocol_version == 4


def test_a_tensor_whose_bytes_disagree_with_its_shape_is_refused() -> None:
    # Prepare: a result claiming a (4, 16) tensor with one value's bytes missing
    message = RoundOutcome(status=pb.READY, round=5, completed_rounds=1, prototypes=_arrays()[0]).to_proto()
    message.global_prototypes.float64_le = message.global_prototypes.float64_le[:-8]
    # Execute / Assert
    with pytest.raises(TensorError, match=r"shape \[4, 16\]"):
        RoundOutcome.from_proto(message)
    config = pb.RoundConfig(status=pb.READY, shared_model=message.global_prototypes)
    with pytest.raises(TensorError):
        RoundOffer.from_proto(config)
