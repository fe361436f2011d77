"""FedHAP's own options (loss weights, discriminator size and learning rate), checked without torch
so the coordinator can validate a configuration it never trains with."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pfmh_model.errors import ConfigError, OptionError


@dataclass(frozen=True)
class FedHAPConfig:
    """FedHAP's own knobs (the network, optimiser, batch and epochs come from ``TrainConfig``).

    Defaults were tuned on Wiki (docs/FEDHAP.md): ``prototype``, ``similarity``, ``quantization``
    and ``adversarial`` weight the loss terms; ``disc_hidden`` is the discriminator's hidden width and
    ``disc_lr`` its Adam learning rate.

    Raises:
        OptionError: a value is out of range (the message names it).
    """

    prototype: float = 3.0
    similarity: float = 1.0
    quantization: float = 0.1
    adversarial: float = 0.1
    disc_hidden: int = 64
    disc_lr: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("prototype", "similarity", "quantization", "adversarial"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < float("inf"):
                raise OptionError(f"FedHAPConfig.{name}={value!r} is invalid: need a finite number >= 0")
        value = self.disc_lr
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
            raise OptionError(f"FedHAPConfig.disc_lr={value!r} is invalid: need a finite number > 0")
        if isinstance(self.disc_hidden, bool) or not isinstance(self.disc_hidden, int) or self.disc_hidden < 1:
            raise OptionError(f"FedHAPConfig.disc_hidden={self.disc_hidden!r} is invalid: need an integer >= 1")


def fedhap_config(options: Mapping[str, Any] | FedHAPConfig | None) -> FedHAPConfig:
    """FedHAPConfig from a plain mapping; unknown keys or bad values raise ConfigError. A FedHAPConfig passes."""
    if isinstance(options, FedHAPConfig):  # already typed (the federation plan's ``fedhap``)
        return options
    options = dict(options or {})
    names = {f.name for f in dataclasses.fields(FedHAPConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(f"unknown FedHAP option(s) {unknown}; valid: {sorted(names)}")
    try:
        return FedHAPConfig(**options)
    except ValueError as exc:
        raise ConfigError(f"FedHAP options: {exc}") from None
