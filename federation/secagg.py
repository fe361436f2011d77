"""The one factory of :class:`~security.secagg_config.SecAggConfig` from a federation's settings.

The coordinator's round engine, every site and the load-time checks build it here, once, so all sides
mask with the same k, t, f, PRG and protocol. The plan's sentinels map to the library's ``None``
("choose the safe default for the cohort"): ``threshold = 0``, ``neighbours = 0``, ``colluders = -1``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from security.secagg_config import SecAggConfig

if TYPE_CHECKING:
    from federation.plan import FederationSettings, SecAggSettings

__all__ = ["secagg_config", "secagg_config_for"]


def secagg_config_for(secagg: SecAggSettings, *, federation_id: str, vector_length: int) -> SecAggConfig:
    """``SecAggConfig`` from a ``[secagg]`` table.

    Raises:
        UnsafeConfiguration: a value the library refuses (``UnsafeSetting`` names the field).
        OverflowRisk: one value could already overflow (``max_abs_value * 2^fraction_bits >= 2^63``).
    """
    return SecAggConfig(federation_id=federation_id, vector_length=vector_length,
                        fraction_bits=secagg.fraction_bits, max_abs_value=secagg.max_abs_value,
                        neighbours=secagg.neighbours or None, threshold=secagg.threshold or None,
                        prg=secagg.prg, colluders=None if secagg.colluders < 0 else secagg.colluders,
                        consistency_check=secagg.consistency_check)


def secagg_config(settings: FederationSettings, *, vector_length: int) -> SecAggConfig:
    """The federation's ``SecAggConfig`` for uploads of ``vector_length`` values (``upload_layout(...).length``)."""
    return secagg_config_for(settings.secagg, federation_id=settings.federation_id, vector_length=vector_length)
