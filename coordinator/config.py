"""``coordinator.toml``: one frozen dataclass tree, loaded strictly (unknown keys and wrong types raise).

Example: ``deploy/config/coordinator.toml``. The ``[federation]`` table is the federation plan
(``federation/plan.py``, which checks its own rules); the rules that need the enrolled sites are
checked here at load time: min_sites within the enrolled sites, the SecAgg threshold, neighbourhood
and overflow bound for every cohort size a round can start with, distributed DP's noise share, a
non-empty enrolment list and readable TLS files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from federation.plan import FederationSettings
from federation.secagg import secagg_config
from proto.settings import FieldError, SettingsError, check_address, check_range, load_toml
from security.dp_cohort import noise_cohort
from security.dp_config import DPMode
from security.errors import OverflowRisk, SecurityError

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

    def __post_init__(self) -> None:
        check_address("listen", self.listen)
        for key in ("max_message_mb", "max_workers", "max_invalid_messages"):
            check_range(self, key, low=1)
        for key in ("long_poll_s", "liveness_s"):
            check_range(self, key, low=0, low_open=True)
        for key in ("grace_s", "gather_s", "exclude_rounds"):
            check_range(self, key, low=0)


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
            raise FieldError("sites", "enrol at least one site")
        bad = [s for s in self.sites if not SITE_NAME.match(s)]
        if bad:
            raise FieldError("sites", f"invalid site name(s) {bad}; use [a-z0-9-]{{1,63}}")
        if len(set(self.sites)) != len(self.sites):
            raise FieldError("sites", "duplicate names")
        if not 1 <= self.federation.min_sites <= len(self.sites):
            raise FieldError("federation.min_sites", f"{self.federation.min_sites} must be within "
                             f"1..{len(self.sites)} (the number of enrolled sites)")
        self._check_cohorts()
        self._check_distributed_noise()
        check_address("metrics_listen", self.metrics_listen, empty_ok=True)
        if not self.tls.crl and not self.tls.allow_no_crl:
            raise FieldError("tls.crl", "is empty: give the CA's crl.pem (or set tls.allow_no_crl = true)")

    def _cohort_sizes(self) -> range:
        """Every cohort size a round can start with (secure aggregation needs at least 2 sites)."""
        return range(max(2, self.federation.min_sites), len(self.sites) + 1)

    def _check_cohorts(self) -> None:
        """The threshold, neighbourhood and overflow rules hold for every cohort a round can start with."""
        fed, sa = self.federation, self.federation.secagg
        secagg = secagg_config(fed, vector_length=1)
        for size in self._cohort_sizes():
            try:
                secagg.plan(size)
            except OverflowRisk as exc:
                raise FieldError("federation.secagg.fraction_bits", f"a cohort of {size} sites could overflow: "
                                 f"{exc}") from None
            except SecurityError as exc:
                key = "federation.secagg.threshold" if sa.threshold else "federation.secagg"
                raise FieldError(key, f"no round could run with a cohort of {size} sites (federation.min_sites = "
                                 f"{fed.min_sites}, {len(self.sites)} enrolled): {exc}") from None

    def _check_distributed_noise(self) -> None:
        """Distributed DP must be able to give the target sigma for every cohort a round can run with."""
        fed = self.federation
        if fed.privacy.mode is not DPMode.DISTRIBUTED:
            return
        if fed.privacy.colluding_sites >= len(self.sites):
            raise FieldError("federation.privacy.colluding_sites", f"{fed.privacy.colluding_sites} must be below "
                             f"the {len(self.sites)} enrolled sites")
        sa, c = fed.secagg, fed.privacy.colluding_sites
        secagg = secagg_config(fed, vector_length=1)
        for size in self._cohort_sizes():
            where = (f"a cohort of {size} sites (federation.min_sites = {fed.min_sites}, federation.secagg.threshold "
                     f"= {sa.threshold or 'default'}, federation.secagg.colluders = {sa.colluders})")
            plan = secagg.plan(size)  # _check_cohorts has shown it holds
            try:
                noise_cohort(threshold=plan.threshold, colluding_sites=c)
            except SecurityError as exc:
                raise FieldError("federation.privacy.mode", f"\"distributed\" cannot give the target sigma with "
                                 f"{where}: {exc}") from None
            if c > plan.colluders:  # the noise would assume a coalition that secure aggregation cannot withstand
                raise FieldError("federation.privacy.colluding_sites", f"privacy.colluding_sites = {c} exceeds the "
                                 f"{plan.colluders} colluders secure aggregation tolerates with {where}: raise "
                                 "federation.secagg.colluders (or the threshold) to at least privacy.colluding_sites")


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
    if (base / cfg.state_dir).exists() and not (base / cfg.state_dir).is_dir():
        raise SettingsError(f"{path}: state_dir = {cfg.state_dir!r}: is a file, not a folder")
    return cfg


def resolve(path: str | Path, value: str) -> Path:
    """A config-relative path made absolute."""
    return (Path(path).resolve().parent / value).resolve()
