"""The federation methods and share modes, as enums both the simulation and the daemons parse once
(torch-free, so the coordinator can check a plan without loading torch)."""
from __future__ import annotations

import enum

__all__ = ["DEFAULT_SEARCH_MODEL", "DEFAULT_SHARE_MODE", "DEFAULT_VALIDATION_FRACTION", "Method", "SearchModel",
           "ShareMode", "keeps_local_model", "resolve_share_mode", "shared_lr_is_constant"]


class Method(enum.StrEnum):
    PFMH = "pfmh"
    FEDAVG = "fedavg"
    LOCAL = "local"
    CENTRALIZED = "centralized"
    FEDHAP = "fedhap"


class ShareMode(enum.StrEnum):
    PROTOTYPES = "prototypes"
    PROTOTYPES_AND_MODEL = "prototypes+model"
    # A plan value, replaced when the plan is loaded (``resolve_share_mode``): nothing downstream sees it.
    AUTO = "auto"


def resolve_share_mode(mode: ShareMode, *, method: Method, dp: bool) -> ShareMode:
    """The share mode a plan's ``auto`` stands for; other modes are returned as given.

    pfmh without DP: ``prototypes+model``, with each site choosing its search model (``search_choice``): it
    was level with or above FedAvg, local-only and prototype sharing on Wiki at Dirichlet alpha 0.1, 0.5
    and 10 (docs/BENCHMARKS.md, "Which shared model a site searches with"). pfmh with DP: ``prototypes``,
    whose searched model never leaves the site and so trains on the full loss without DP-SGD (paper mode
    under DP: per-site 0.63-0.67 and global 0.19-0.25, against 0.83-0.85 and 0.71-0.75; "Privacy-utility
    curve"). fedhap: ``prototypes``, as before.
    """
    if mode is not ShareMode.AUTO:
        return mode
    if method is Method.PFMH and not dp:
        return ShareMode.PROTOTYPES_AND_MODEL
    return ShareMode.PROTOTYPES


# The one default both the daemons and the simulation use (issue #14 picks it by measurement).
DEFAULT_SHARE_MODE = ShareMode.AUTO


class SearchModel(enum.StrEnum):
    """What a pfmh site searches with when the shared model is federated (``pfmh_model.search_choice``)."""

    AGGREGATE = "aggregate"  # the round's aggregated model (as in the paper)
    LOCAL = "local"  # the model the site trained this round, before aggregation
    # a blend of the local one and the aggregate (3:1), only where it is clearly better on the site's held-out records
    VALIDATED = "validated"


# The one default of the simulation and the site daemon.
DEFAULT_SEARCH_MODEL = SearchModel.VALIDATED
# The fraction of its training records a site holds out: the simulation validates every method on it;
# a site daemon holds it out only where it decides its search model (``keeps_local_model``).
DEFAULT_VALIDATION_FRACTION = 0.1


def keeps_local_model(method: Method, share_mode: ShareMode, search_model: SearchModel) -> bool:
    """Whether a site may search with its locally trained shared model instead of the aggregate: pfmh with
    its model federated and a search model other than the aggregate (FedAvg and FedHAP search with the
    aggregate, as in their papers; with prototype sharing a site has one shared model)."""
    return method is Method.PFMH and share_mode is ShareMode.PROTOTYPES_AND_MODEL and \
        search_model is not SearchModel.AGGREGATE


def shared_lr_is_constant(method: Method, share_mode: ShareMode) -> bool:
    """Whether a site trains its shared model at a constant rate whatever ``TrainConfig.shared_lr_decay`` says:
    pfmh with its shared model federated. Decay there shrank each round's local step until the model a site
    trained was the aggregate again (nothing left to choose by ``search_model``), and the aggregate itself
    searched worse (Wiki alpha 10, seed 0, round 20: 0.635 / 0.622 per-site / global with decay 0.8, 0.700 /
    0.692 constant; docs/BENCHMARKS.md)."""
    return method is Method.PFMH and share_mode is ShareMode.PROTOTYPES_AND_MODEL
