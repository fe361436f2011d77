"""The federation methods and share modes, as enums both the simulation and the daemons parse once
(torch-free, so the coordinator can check a plan without loading torch)."""
from __future__ import annotations

import enum

__all__ = ["DEFAULT_SHARE_MODE", "Method", "ShareMode"]


class Method(enum.StrEnum):
    PFMH = "pfmh"
    FEDAVG = "fedavg"
    LOCAL = "local"
    CENTRALIZED = "centralized"
    FEDHAP = "fedhap"


class ShareMode(enum.StrEnum):
    PROTOTYPES = "prototypes"
    PROTOTYPES_AND_MODEL = "prototypes+model"


# The one default both the daemons and the simulation use (issue #14 picks it by measurement).
DEFAULT_SHARE_MODE = ShareMode.PROTOTYPES
