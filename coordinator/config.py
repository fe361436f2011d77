"""``coordinator.toml``: one frozen dataclass tree, loaded strictly (unknown keys and wrong types raise).

Example: ``deploy/config/coordinator.toml``. Cross-field invariants (min_sites within the enrolled
sites, a non-empty enrolment list, readable TLS files) are checked at load time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pfmh_model.errors import ConfigError
from pfmh_model.fedhap_config import fedhap_config
from proto.settings import FederationSettings, SettingsError, load_toml
from security.dp_cohort import noise_cohort
from security.errors import SecurityError
from security.secagg_config import SecAggConfig

SITE_NAME = re.compile(r"^[a-z0-9-]{1,63}$")


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    max_message_mb: int = 64
    grace_s: float = 5.0
    long_poll_s: float = 10.0   # longest a long-poll RPC waits before answering PENDING
    max_workers: int = 64
    liveness_s: float = 30.0    # a site that has not called for this long is not put in a new cohort
    gather_s: float = 3.0       # once min_sites are live, wait this long for the other enrolled sites
    exclude_rounds: int = 3     # a site refused at the door (forged/replayed message) sits out this many rounds
    max_invalid_messages: int = 3  # rejected messages in one round that also exclude a site


@dataclass(frozen=True)
class TlsSettings:
    ca_cert: str
    cert: str
    key: str
    crl: str = ""               # empty: no revocation list (refused unless allow_no_crl)
    allow_no_crl: bool = False


@dataclass(frozen=True)
class CoordinatorConfig:
    federation: FederationSettings
    sites: tuple[str, ...]
    tls: TlsSettings
    server: ServerSettings = field(default_factory=ServerSettings)
    state_dir: str = "state/coordinator"
    metrics_listen: str = ""    # "127.0.0.1:9464" exposes Prometheus metrics; empty: off

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("sites: enrol at least one site")
        bad = [s for s in self.sites if not SITE_NAME.match(s)]
        if bad:
            raise ValueError(f"sites: invalid site name(s) {bad}; use [a-z0-9-]{{1,63}}")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError("sites: duplicate names")
        if not 1 <= self.federation.min_sites <= len(self.sites):
            raise ValueError(f"federation.min_sites={self.federation.min_sites} must be within 1..{len(self.sites)} "
                             "(the number of enrolled sites)")
        if self.federation.method not in ("pfmh", "fedavg", "fedhap"):
            raise ValueError(f"federation.method={self.federation.method!r}: choose pfmh, fedavg or fedhap")
        if self.federation.share_mode not in ("prototypes", "prototypes+model"):
            raise ValueError(f"federation.share_mode={self.federation.share_mode!r}: "
                             "choose prototypes or prototypes+model")
        if self.federation.method == "fedavg" and self.federation.privacy.mode != "off":
            raise ValueError("method fedavg federates only the model and has no DP mechanism here: use method "
                             "pfmh, or set federation.privacy.mode = \"off\" to run FedAvg without DP")
        if self.federation.fedhap and self.federation.method != "fedhap":
            raise ValueError(f"[federation.fedhap] options are set but federation.method is "
                             f"{self.federation.method!r}; remove them or use method fedhap")
        try:
            fedhap_config(self.federation.fedhap)
        except ConfigError as exc:
            raise ValueError(f"[federation.fedhap]: {exc}") from None
        if self.federation.method == "fedhap" and self.federation.uses_dp_sgd:
            raise ValueError("method fedhap with DP shares its model without DP-SGD support here: use "
                             "share_mode = \"prototypes\" (the class-code votes get DP noise), or privacy mode off")
        self._check_distributed_noise()
        if not self.tls.crl and not self.tls.allow_no_crl:
            raise ValueError("tls.crl is empty: give the CA's crl.pem (or set tls.allow_no_crl = true)")


    def _check_distributed_noise(self) -> None:
        """Distributed DP must be able to give the target sigma for every cohort a round can run with."""
        fed = self.federation
        if fed.privacy.mode != "distributed":
            return
        if fed.privacy.colluding_sites >= len(self.sites):
            raise ValueError(f"federation.privacy.colluding_sites={fed.privacy.colluding_sites} must be below the "
                             f"{len(self.sites)} enrolled sites")
        sa, c = fed.secagg, fed.privacy.colluding_sites
        secagg = SecAggConfig(federation_id=fed.federation_id, vector_length=1, fraction_bits=0, max_abs_value=1.0,
                              neighbours=sa.neighbours or None, threshold=sa.threshold or None,
                              colluders=None if sa.colluders < 0 else sa.colluders,
                              consistency_check=sa.consistency_check)
        for size in range(max(2, fed.min_sites), len(self.sites) + 1):
            where = (f"a cohort of {size} sites (federation.min_sites = {fed.min_sites}, federation.secagg.threshold "
                     f"= {sa.threshold or 'default'}, federation.secagg.colluders = {sa.colluders})")
            try:
                plan = secagg.plan(size)
                noise_cohort(threshold=plan.threshold, colluding_sites=c)
            except SecurityError as exc:
                raise ValueError(f"federation.privacy.mode = \"distributed\" cannot give the target sigma with "
                                 f"{where}: {exc}") from None
            if c > plan.colluders:  # the noise would assume a coalition that secure aggregation cannot withstand
                raise ValueError(f"federation.privacy.colluding_sites = {c} exceeds the {plan.colluders} colluders "
                                 f"secure aggregation tolerates with {where}: raise federation.secagg.colluders "
                                 "(or the threshold) to at least privacy.colluding_sites")


def load_config(path: str | Path) -> CoordinatorConfig:
    """Load and validate ``coordinator.toml``; relative paths are taken from the file's folder."""
    cfg = load_toml(CoordinatorConfig, path)
    base = Path(path).resolve().parent
    files = {"tls.ca_cert": cfg.tls.ca_cert, "tls.cert": cfg.tls.cert, "tls.key": cfg.tls.key}
    if cfg.tls.crl:
        files["tls.crl"] = cfg.tls.crl
    for key, value in files.items():
        if not (base / value).is_file():
            raise SettingsError(f"{path}: {key} = {value!r}: no such file")
    return cfg


def resolve(path: str | Path, value: str) -> Path:
    """A config-relative path made absolute."""
    return (Path(path).resolve().parent / value).resolve()
