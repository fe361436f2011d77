"""The upload layout every site and the coordinator agree on, worked out once from the plan.

An upload is ``[prototype sums, counts | shared-model weights * count, count]`` (``pfmh_model.aggregation``);
which parts are present and how long they are follows from the method, the share mode and ``train.bits``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pfmh_model.aggregation import UploadLayout

if TYPE_CHECKING:
    from federation.plan import FederationSettings

__all__ = ["upload_layout"]


def upload_layout(settings: FederationSettings, *, shared_size: int | None = None) -> UploadLayout:
    """The federation's upload layout.

    Args:
        settings: the federation plan.
        shared_size: number of weights of the shared model when the site already built it
            (``flatten_state(trainer.shared_state()).size``); ``None``: count them here, which loads
            torch lazily, and only when the model is shared (a prototype-only coordinator never does).
    """
    size = 0
    if settings.shares_model:
        if shared_size is None:
            from pfmh_model.trainer_factory import shared_model_size  # lazy: torch

            shared_size = shared_model_size(settings.train, image_dim=settings.image_dim, text_dim=settings.text_dim,
                                            num_classes=settings.num_classes, dp_compatible=settings.uses_dp_sgd)
        size = shared_size
    protos = settings.uses_prototypes
    return UploadLayout(settings.num_classes if protos else 0, settings.train.bits if protos else 0, size)
