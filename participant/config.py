"""``site.toml``: a site's own settings (identity, data, TLS files, privacy budget, retry policy).

Federation-wide settings (model, training, DP policy, secure aggregation) come from the
coordinator at join time; what a site decides alone lives here. Relative paths are taken from
the config file's folder. Example: ``deploy/config/site-hospital-a.toml``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from proto.settings import FieldError, SettingsError, check_address, check_range, load_toml

SITE_NAME = re.compile(r"^[a-z0-9-]{1,63}$")
DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


@dataclass(frozen=True)
class SiteTls:
    ca_cert: str
    cert: str
    key: str
    signing_key: str
    crl: str = ""                  # peers' certificates are also checked against it when given


@dataclass(frozen=True)
class SitePrivacy:
    epsilon_max: float = 8.0       # this site's total budget; it stops uploading before exceeding it
    require_dp: bool = True        # refuse to upload prototype statistics without DP noise
    frozen_encoder: str = ""       # weights file when the federation's statistics_encoder is "frozen" with a sha256


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    give_up_s: float = 900.0       # stop after this long without reaching the coordinator

    def __post_init__(self) -> None:
        for key in ("initial_s", "give_up_s"):
            check_range(self, key, low=0, low_open=True)
        check_range(self, "max_s", low=self.initial_s)


@dataclass(frozen=True)
class SearchService:
    """``[search]``: the site's own search server (``pfmh-participant serve-search``)."""

    listen: str = "127.0.0.1:50061"
    client_ca: str = ""            # CA that certifies the clients allowed to search (need not be the federation's)
    cert: str = ""                 # server certificate (needs the serverAuth usage: `pfmh-ca issue
    key: str = ""                  # --coordinator` from the site's own CA) and its key
    server_name: str = "localhost"  # only used by clients: a DNS name in the server certificate
    metrics_listen: str = ""       # "127.0.0.1:9466" exposes the search metrics; empty: off
    reload_s: float = 5.0          # how often it looks for a new model snapshot or archive generation
    grace_s: float = 5.0           # SIGTERM: in-flight searches get this long to finish
    max_workers: int = 8

    def __post_init__(self) -> None:
        check_address("listen", self.listen)
        check_address("metrics_listen", self.metrics_listen, empty_ok=True)
        check_range(self, "reload_s", low=0, low_open=True)
        check_range(self, "grace_s", low=0)
        check_range(self, "max_workers", low=1)


@dataclass(frozen=True)
class SiteConfig:
    site: str
    federation_id: str
    coordinator: str               # host:port
    data: str                      # this site's HDF5 file (community layout)
    tls: SiteTls
    server_name: str = "localhost"  # name in the coordinator certificate
    state_dir: str = "state/site"
    threads: int = 1                # torch intra-op threads (pfmh_model/threads.py: more thrash on a busy machine)
    device: str = "cpu"            # auto | cpu | cuda | cuda:N: where this site trains (pfmh_model/device.py)
    privacy: SitePrivacy = field(default_factory=SitePrivacy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    metrics_listen: str = ""       # "127.0.0.1:9465" exposes this site's metrics; empty: off
    rpc_timeout_s: float = 30.0
    search: SearchService = field(default_factory=SearchService)

    def __post_init__(self) -> None:
        if not SITE_NAME.match(self.site):
            raise FieldError("site", f"{self.site!r}: use [a-z0-9-]{{1,63}}")
        if not self.federation_id:
            raise FieldError("federation_id", "must not be empty")
        check_address("coordinator", self.coordinator)
        check_address("metrics_listen", self.metrics_listen, empty_ok=True)
        check_range(self, "threads", low=1)
        check_range(self, "rpc_timeout_s", low=0, low_open=True)
        if not DEVICE.match(self.device):
            raise FieldError("device", f"{self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not (self.privacy.epsilon_max > 0 and self.privacy.epsilon_max < float("inf")):
            raise FieldError("privacy.epsilon_max", f"{self.privacy.epsilon_max} must be > 0 and finite")


def load_config(path: str | Path) -> SiteConfig:
    """Load ``site.toml`` and check its files exist."""
    cfg = load_toml(SiteConfig, path)
    base = Path(path).resolve().parent
    files = {"tls.ca_cert": cfg.tls.ca_cert, "tls.cert": cfg.tls.cert, "tls.key": cfg.tls.key,
             "tls.signing_key": cfg.tls.signing_key, "data": cfg.data}
    for key, value in files.items():
        if not (base / value).is_file():
            raise SettingsError(f"{path}: {key} = {value!r}: no such file")
    if (base / cfg.state_dir).exists() and not (base / cfg.state_dir).is_dir():
        raise SettingsError(f"{path}: state_dir = {cfg.state_dir!r}: is a file, not a folder")
    return cfg
