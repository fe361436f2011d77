"""``security.ledger_records``: the ledger's record types survive their JSON form and refuse any other shape."""
from __future__ import annotations

import json
import re

import pytest

from security.ledger import canonical_json
from security.ledger_records import (
    COVERED,
    PROTOTYPE_MECHANISM,
    DpRelease,
    DpSum,
    MalformedRecord,
    UploadWithoutDp,
    read_record,
)

RELEASE = DpRelease(round=3, mechanism=PROTOTYPE_MECHANISM, mode="distributed", noise_multiplier=1.1,
                    sensitivity=2 ** 0.5, sample_rate=1.0, steps=1, delta=1e-5, epsilon=2.5, epsilon_max=8.0,
                    accountant="rdp", covered=COVERED[PROTOTYPE_MECHANISM], not_covered="record counts",
                    encoder_chain="dp_sgd", noise_cohort=2, colluding_sites=1)


@pytest.mark.parametrize("record", [
    RELEASE,
    DpRelease(**{k: v for k, v in RELEASE.to_record().items() if k not in ("kind", "noise_cohort", "colluding_sites")}),
    UploadWithoutDp(round=2, what="prototype statistics (DP off)"),
    DpSum(round=3, contributors=4, noise_cohort=2, colluding_sites=1, sum_noise_multiplier=1.9),
])
def test_every_kind_round_trips_through_canonical_json(record) -> None:  # noqa: ANN001
    # Execute: as the ledger stores it and reads it back
    stored = json.loads(canonical_json(record.to_record()))
    # Assert
    assert read_record(stored) == record
    assert stored["kind"] == record.KIND


def test_optional_fields_are_left_out_when_unset() -> None:
    # Prepare: a local-mode release has no cohort; ledgers written before the field existed read the same
    local = DpRelease(**{k: v for k, v in RELEASE.to_record().items()
                         if k not in ("kind", "noise_cohort", "colluding_sites")})
    # Execute
    stored = local.to_record()
    # Assert
    assert "noise_cohort" not in stored and "colluding_sites" not in stored
    assert read_record({k: v for k, v in stored.items() if k != "encoder_chain"}).encoder_chain == ""


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "telemetry"}, "kind 'telemetry' is not one of ('dp_release', 'upload_without_dp', 'dp_sum')"),
    ({"steps": 1.5}, "field 'steps' = 1.5 is missing or not int"),
    ({"epsilon": True}, "field 'epsilon' = True is missing or not float"),
    ({"mechanism": "laplace"}, "field 'mechanism' = 'laplace' is not one of"),
    ({"mode": None}, "field 'mode' = None is missing or not str"),
    ({"noise_cohort": "2"}, "field 'noise_cohort' = '2' is missing or not int"),
    ({"extra": 1}, "field 'extra' is not part of a dp_release record"),
])
def test_a_record_of_another_shape_is_refused(change: dict, message: str) -> None:  # type: ignore[type-arg]
    # Prepare
    record = {**RELEASE.to_record(), **change}
    # Execute / Assert
    with pytest.raises(MalformedRecord, match=re.escape(message)):
        read_record(record)


def test_an_integer_float_field_reads_as_float() -> None:
    # Execute
    rec = read_record({**RELEASE.to_record(), "noise_multiplier": 2})
    # Assert
    assert isinstance(rec, DpRelease) and rec.noise_multiplier == 2.0 and isinstance(rec.noise_multiplier, float)
    assert rec.budget_left == pytest.approx(5.5)
