"""Typed settings: a strict TOML/JSON -> frozen-dataclass builder and the federation-wide settings.

``FederationSettings`` is part of the wire contract: the coordinator sends it as JSON in
``JoinReply.settings_json`` so every site trains, encodes and masks with the same parameters.
``build`` is the one loader both daemons use: unknown keys and wrong types raise
``SettingsError`` naming the file and the key path (house rule 9).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PROTOCOL_VERSION = 3  # 2: compact key directories (Advertisements.advertisers); 3: consistency check


class SettingsError(Exception):
    """A config file or settings document is invalid; the message names the file and key path."""


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected a table, got {type(value).__name__}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except SettingsError as exc:
                errors.append(str(exc))
        raise SettingsError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {type(value).__name__}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return tuple(_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected a table, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, str) and tp is not str:  # StrEnum
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)  # type: ignore[attr-defined]
            raise SettingsError(f"{where}: {value!r} is not one of: {choices}") from None
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SettingsError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys and wrong types raise)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise SettingsError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _check(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SettingsError(f"{where or cls.__name__}: {exc}") from None
    except ValueError as exc:  # dataclass invariants (__post_init__)
        raise SettingsError(f"{where or cls.__name__}: {exc}") from None


def load_toml(cls: type[T], path: str | Path) -> T:
    """Read a TOML file into ``cls``; errors name the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    try:
        return build(cls, data)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def to_plain(obj: Any) -> Any:
    """A dataclass tree as JSON-able dicts (enums become their values)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class SecAggSettings:
    """Secure aggregation: 0 means 'choose the safe default for the cohort size'."""

    threshold: int = 0
    neighbours: int = 0
    fraction_bits: int = 20
    max_abs_value: float = 1.0e7
    prg: str = "aes256-ctr"        # mask stream: aes256-ctr (fast with AES-NI) or chacha20
    colluders: int = -1            # colluding sites to tolerate; -1: as many as the threshold allows
    consistency_check: bool = True  # false: semi-honest protocol, only against an honest coordinator


@dataclass(frozen=True)
class PrivacySettings:
    """The federation's DP policy for prototype statistics (and DP-SGD when the model is shared)."""

    mode: str = "local"            # off | local | distributed
    noise_multiplier: float = 1.0
    delta: float = 1.0e-5
    accountant: str = "rdp"        # rdp | prv
    label_cap: int = 0             # 0: scale every record by 1/sqrt(#labels)
    dp_sgd_noise_multiplier: float = 1.0
    dp_sgd_max_grad_norm: float = 1.0
    # Which model computes the released statistics (docs/PRIVACY.md, "The DP chain"):
    #   dp_sgd: the site's personal model, trained with Opacus DP-SGD (composed in the same accountant);
    #   frozen: a model never trained on the site's records (weights named by frozen_encoder_sha256,
    #           or the common seed-initialised network when that is empty).
    statistics_encoder: str = "dp_sgd"
    frozen_encoder_sha256: str = ""
    colluding_sites: int = 0       # distributed mode: sites that may collude with the coordinator (c)

    def __post_init__(self) -> None:
        if self.mode not in ("off", "local", "distributed"):
            raise ValueError(f"privacy.mode={self.mode!r}: choose off, local or distributed")
        if self.statistics_encoder not in ("dp_sgd", "frozen"):
            raise ValueError(f"privacy.statistics_encoder={self.statistics_encoder!r}: choose dp_sgd or frozen")
        if self.frozen_encoder_sha256 and self.statistics_encoder != "frozen":
            raise ValueError("privacy.frozen_encoder_sha256 is set but privacy.statistics_encoder is not "
                             "\"frozen\"")
        if isinstance(self.colluding_sites, bool) or self.colluding_sites < 0:
            raise ValueError(f"privacy.colluding_sites={self.colluding_sites!r} must be an integer >= 0")

    @property
    def trains_encoder_with_dp_sgd(self) -> bool:
        """DP is on and the statistics come from a model trained on the records (so DP-SGD trains it)."""
        return self.mode != "off" and self.statistics_encoder == "dp_sgd"


@dataclass(frozen=True)
class FederationSettings:
    """What every site must agree on; sent in ``JoinReply.settings_json``."""

    federation_id: str
    image_dim: int
    text_dim: int
    num_classes: int
    method: str = "pfmh"                 # pfmh | fedavg | fedhap
    share_mode: str = "prototypes"       # prototypes | prototypes+model (= pfmh_model.methods.DEFAULT_SHARE_MODE)
    rounds: int = 5
    min_sites: int = 2
    train: dict[str, Any] = field(default_factory=dict)   # pfmh_model.training.TrainConfig fields
    fedhap: dict[str, Any] = field(default_factory=dict)  # pfmh_model.fedhap_config.FedHAPConfig fields
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    train_timeout_s: float = 600.0
    phase_timeout_s: float = 60.0

    @property
    def uses_prototypes(self) -> bool:
        """Prototype statistics (PFMH) or class-code votes (FedHAP) travel in the upload."""
        return self.method in ("pfmh", "fedhap")

    @property
    def shares_model(self) -> bool:
        return self.method == "fedavg" or self.share_mode == "prototypes+model"

    @property
    def uses_dp_sgd(self) -> bool:
        """The shared model is federated under DP, so it is trained with DP-SGD (and BatchNorm is swapped)."""
        return self.privacy.mode != "off" and self.shares_model

    def to_json(self) -> str:
        return json.dumps(to_plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FederationSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings document is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError("settings document must be a JSON object")
        return build(cls, data, "settings")
