"""The federation plan: what every site must agree on, typed and checked once, when a daemon starts.

``FederationSettings`` is the ``[federation]`` table of ``coordinator.toml`` and the JSON document the
coordinator sends in ``JoinReply.settings_json``; both daemons build it with ``proto.settings.build``, so
an unknown key, a wrong type or a broken rule is refused with one line naming the file and the key path
(``coordinator.toml: federation.privacy.delta: delta=5.0 must be in (0, 1); ...``). Nothing downstream
parses strings: the method and share mode are :class:`~pfmh_model.methods.Method` /
:class:`~pfmh_model.methods.ShareMode`, ``train`` is a :class:`~pfmh_model.train_config.TrainConfig`,
``fedhap`` a :class:`~pfmh_model.fedhap_config.FedHAPConfig`, the PRG a
:class:`~security.prg.PrgAlgorithm`, the DP mode a :class:`~security.dp_config.DPMode` and the accountant
an :class:`~security.accountant.AccountantKind`.

Wire format (``PROTOCOL_VERSION`` 3, unchanged): the same keys as before, with ``train`` and ``fedhap``
now always written in full. Older documents (``train`` with only the keys a TOML set, ``fedhap = {}``)
still parse: missing keys take their defaults.

Rules checked here (the cohort-dependent ones, which need the enrolled sites, are in
``coordinator/config.py``): sigma > 0 unless DP is off, 0 < delta < 1, a known accountant and PRG,
fraction bits in range and ``max_abs_value * 2^f < 2^63``, a federated method, FedAvg only without DP,
FedHAP options only with method fedhap, FedHAP without DP-SGD, the frozen-encoder pairing.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from federation.secagg import secagg_config_for
from pfmh_model.fedhap_config import FedHAPConfig
from pfmh_model.methods import (
    DEFAULT_SEARCH_MODEL,
    DEFAULT_SHARE_MODE,
    DEFAULT_VALIDATION_FRACTION,
    Method,
    SearchModel,
    ShareMode,
    keeps_local_model,
    resolve_share_mode,
)
from pfmh_model.train_config import TrainConfig
from proto.settings import FieldError, SettingsError, build, coerce, to_plain
from security.accountant import AccountantKind
from security.dp_config import DPConfig, DPMode
from security.errors import OverflowRisk, UnsafeConfiguration, UnsafeSetting
from security.prg import PrgAlgorithm

__all__ = ["FEDERATED_METHODS", "FederationSettings", "PrivacySettings", "SecAggSettings", "StatisticsEncoder"]

FEDERATED_METHODS = (Method.PFMH, Method.FEDAVG, Method.FEDHAP)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StatisticsEncoder(enum.StrEnum):
    """Which model computes the released statistics (docs/PRIVACY.md, "The DP chain")."""

    DP_SGD = "dp_sgd"   # the site's personal model, trained with Opacus DP-SGD (composed in the same accountant)
    FROZEN = "frozen"   # a model never trained on the site's records


def _coerce_fields(obj: Any) -> None:
    """Convert strings to the annotated enums and tables to the annotated dataclasses (direct construction)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        typed = isinstance(tp, type) and (issubclass(tp, enum.Enum) or dataclasses.is_dataclass(tp))
        if typed and not isinstance(value, tp):
            object.__setattr__(obj, f.name, coerce(value, tp, f.name))


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise FieldError(name, f"{value!r} must be a finite number > 0")


def _at_least(obj: Any, low: int, *names: str, why: str = "") -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FieldError(name, f"{value!r} must be an integer >= {low}{why}")


@dataclass(frozen=True)
class SecAggSettings:
    """``[federation.secagg]``: secure aggregation. 0 (and colluders -1) mean "the safe default for the cohort".

    Attributes:
        threshold: Shamir threshold t per neighbourhood (0: the default for the cohort size).
        neighbours: SecAgg+ degree k, even (0: ``ceil(2 log2 n)``; k >= n - 1 is plain SecAgg).
        fraction_bits: fixed-point fraction bits f (resolution 2^-f); n * max_abs_value * 2^f must stay < 2^63.
        max_abs_value: bound on every uploaded value's magnitude.
        prg: mask stream, ``aes256-ctr`` (fast with AES-NI) or ``chacha20``.
        colluders: colluding sites to tolerate (-1: as many as the threshold allows).
        consistency_check: false: the semi-honest protocol, safe only against an honest coordinator.
    """

    threshold: int = 0
    neighbours: int = 0
    fraction_bits: int = 20
    max_abs_value: float = 1.0e7
    prg: PrgAlgorithm = PrgAlgorithm.AES256_CTR
    colluders: int = -1
    consistency_check: bool = True

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _at_least(self, 0, "threshold", "neighbours", why=" (0: the default for the cohort size)")
        _at_least(self, -1, "colluders", why=" (-1: as many as the threshold allows)")
        _positive(self, "max_abs_value")
        try:  # the library's own rules (f range, k even, t >= 2, 2t > k + 1, one value cannot overflow)
            secagg_config_for(self, federation_id="plan", vector_length=1)
        except UnsafeSetting as exc:
            raise FieldError(exc.setting, str(exc)) from None
        except OverflowRisk as exc:
            raise FieldError("fraction_bits", str(exc)) from None
        except UnsafeConfiguration as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class PrivacySettings:
    """``[federation.privacy]``: the DP policy for prototype statistics (and DP-SGD when the model is shared).

    Attributes:
        mode: ``off``, ``local`` (full noise per site) or ``distributed`` (noise shared over the cohort).
        noise_multiplier: sigma of the statistics' Gaussian noise, in units of the sensitivity (> 0 unless off).
        delta: the delta of (epsilon, delta)-DP, in (0, 1).
        accountant: ``rdp`` or ``prv``.
        label_cap: L (0: scale every record by 1/sqrt(#labels)).
        dp_sgd_noise_multiplier, dp_sgd_max_grad_norm: DP-SGD of the model that computes the statistics.
        statistics_encoder: ``dp_sgd`` or ``frozen`` (``StatisticsEncoder``).
        frozen_encoder_sha256: weights of the frozen encoder (empty: the common seed-initialised network).
        colluding_sites: distributed mode: sites that may collude with the coordinator (c).
    """

    mode: DPMode = DPMode.LOCAL
    noise_multiplier: float = 1.0
    delta: float = 1.0e-5
    accountant: AccountantKind = AccountantKind.RDP
    label_cap: int = 0
    dp_sgd_noise_multiplier: float = 1.0
    dp_sgd_max_grad_norm: float = 1.0
    statistics_encoder: StatisticsEncoder = StatisticsEncoder.DP_SGD
    frozen_encoder_sha256: str = ""
    colluding_sites: int = 0

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _at_least(self, 0, "label_cap", why=" (0: every record scaled by 1/sqrt(#labels))")
        try:
            self.policy()
        except UnsafeSetting as exc:
            raise FieldError(exc.setting, str(exc)) from None
        if self.mode is not DPMode.OFF:
            _positive(self, "dp_sgd_noise_multiplier", "dp_sgd_max_grad_norm")
        if self.frozen_encoder_sha256 and self.statistics_encoder is not StatisticsEncoder.FROZEN:
            raise FieldError("frozen_encoder_sha256", "is set but privacy.statistics_encoder is not \"frozen\"")
        if self.frozen_encoder_sha256 and not _SHA256.match(self.frozen_encoder_sha256):
            raise FieldError("frozen_encoder_sha256", f"{self.frozen_encoder_sha256!r} is not 64 lowercase hex digits")
        if isinstance(self.colluding_sites, bool) or not isinstance(self.colluding_sites, int) \
                or self.colluding_sites < 0:
            raise FieldError("colluding_sites", f"colluding_sites={self.colluding_sites!r} must be an integer >= 0")

    def policy(self) -> DPConfig:
        """The library's :class:`DPConfig` for these settings (it enforces sigma > 0 and 0 < delta < 1)."""
        return DPConfig(mode=self.mode, noise_multiplier=self.noise_multiplier, delta=self.delta,
                        accountant=self.accountant, label_cap=self.label_cap or None)

    @property
    def trains_encoder_with_dp_sgd(self) -> bool:
        """DP is on and the statistics come from a model trained on the records (so DP-SGD trains it)."""
        return self.mode is not DPMode.OFF and self.statistics_encoder is StatisticsEncoder.DP_SGD


@dataclass(frozen=True)
class FederationSettings:
    """``[federation]``: what every site must agree on; sent in ``JoinReply.settings_json``.

    Attributes:
        federation_id: the federation's name (bound into every key derivation and signature).
        image_dim, text_dim, num_classes: the data's shape; every site's data must match.
        method: ``pfmh``, ``fedavg`` or ``fedhap``.
        share_mode: ``prototypes``, ``prototypes+model`` or ``auto`` (the default,
            ``pfmh_model.methods.DEFAULT_SHARE_MODE``), which is replaced here by the mode it stands for
            (``methods.resolve_share_mode``: prototypes+model for pfmh without DP, else prototypes).
        search_model: with pfmh and ``prototypes+model``, what a site searches with after a round:
            ``aggregate``, ``local`` or ``validated`` (``pfmh_model.search_choice``; a validated site searches
            with the mean of the blends it picked over the rounds, ``search_choice.next_search_model``, at the
            default cap ``SEARCH_AVERAGE``, none).
        validation_fraction: the share of its training records such a site holds out to decide it (0..0.5).
        rounds: federated rounds to run.
        min_sites: the fewest sites a round starts with (at most the enrolled sites).
        train: local training (``TrainConfig``'s fields). Its ``weights.contrastive`` default, ``"auto"``, is
            replaced here: 3 without DP, 1 with DP (``TrainConfig.resolved``).
        fedhap: FedHAP's own options (only with method fedhap).
        train_timeout_s: how long a round waits for local training; phase_timeout_s: for each SecAgg phase.
    """

    federation_id: str
    image_dim: int
    text_dim: int
    num_classes: int
    method: Method = Method.PFMH
    share_mode: ShareMode = DEFAULT_SHARE_MODE
    search_model: SearchModel = DEFAULT_SEARCH_MODEL
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    rounds: int = 5
    min_sites: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)
    fedhap: FedHAPConfig = field(default_factory=FedHAPConfig)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    train_timeout_s: float = 600.0
    phase_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        _coerce_fields(self)
        dp = self.privacy.mode is not DPMode.OFF
        object.__setattr__(self, "share_mode", resolve_share_mode(self.share_mode, method=self.method, dp=dp))
        object.__setattr__(self, "train", self.train.resolved(dp=dp))
        if not isinstance(self.federation_id, str) or not self.federation_id:
            raise FieldError("federation_id", f"{self.federation_id!r} must be a non-empty string")
        _at_least(self, 1, "image_dim", "text_dim", "num_classes", "rounds", "min_sites")
        _positive(self, "train_timeout_s", "phase_timeout_s")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 0.5:
            raise FieldError("validation_fraction", f"{fraction!r} must be a number from 0 to 0.5")
        if self.method not in FEDERATED_METHODS:
            raise FieldError("method", f"{self.method.value!r} is not federated: choose "
                             f"{', '.join(m.value for m in FEDERATED_METHODS)}")
        if self.method is Method.FEDAVG and self.privacy.mode is not DPMode.OFF:
            raise FieldError("privacy.mode", "method fedavg federates only the model and has no DP mechanism here: "
                             "use method pfmh, or set federation.privacy.mode = \"off\" to run FedAvg without DP")
        if self.method is not Method.FEDHAP and self.fedhap != FedHAPConfig():
            raise FieldError("fedhap", f"[federation.fedhap] options are set but federation.method is "
                             f"{self.method.value!r}; remove them or use method fedhap")
        if self.method is Method.FEDHAP and self.uses_dp_sgd:
            raise FieldError("share_mode", "method fedhap with DP shares its model without DP-SGD support here: "
                             "use share_mode = \"prototypes\" (the class-code votes get DP noise), or privacy mode off")

    @property
    def uses_prototypes(self) -> bool:
        """Prototype statistics (PFMH) or class-code votes (FedHAP) travel in the upload."""
        return self.method in (Method.PFMH, Method.FEDHAP)

    @property
    def shares_model(self) -> bool:
        return self.method is Method.FEDAVG or self.share_mode is ShareMode.PROTOTYPES_AND_MODEL

    @property
    def keeps_local_model(self) -> bool:
        """A site may search with the shared model it trained locally (and holds out validation records)."""
        return keeps_local_model(self.method, self.share_mode, self.search_model)

    @property
    def uses_dp_sgd(self) -> bool:
        """The shared model is federated under DP, so it is trained with DP-SGD (and BatchNorm is swapped)."""
        return self.privacy.mode is not DPMode.OFF and self.shares_model

    def to_json(self) -> str:
        """The wire document (``JoinReply.settings_json``): every key, enums as their values."""
        return json.dumps(to_plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FederationSettings:
        """Parse and check a settings document (the same rules as the coordinator's TOML).

        Raises:
            SettingsError: not JSON, not an object, or a key or rule fails (``settings.<key path>: ...``).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings document is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError("settings document must be a JSON object")
        return build(cls, data, "settings")
