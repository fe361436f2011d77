"""``site.toml``: a site's own settings (identity, data, TLS files, privacy budget, retry policy).

Federation-wide settings (model, training, DP policy, secure aggregation) come from the
coordinator at join time; what a site decides alone lives here. Relative paths are taken from
the config file's folder. Example: ``deploy/config/site-hospital-a.toml``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from proto.settings import SettingsError, load_toml

SITE_NAME = re.compile(r"^[a-z0-9-]{1,63}$")


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


@dataclass(frozen=True)
class SearchService:
    """``[search]``: the site's own search server (``pfmh-participant serve-search``)."""

    listen: str = "127.0.0.1:50061"
    client_ca: str = ""            # CA that certifies the clients allowed to search (need not be the federation's)
    cert: str = ""                 # server certificate (needs the serverAuth usage: `pfmh-ca issue --role
    key: str = ""                  # coordinator` from the site's own CA) and its key
    server_name: str = "localhost"  # only used by clients: a DNS name in the server certificate
    metrics_listen: str = ""       # "127.0.0.1:9466" exposes the search metrics; empty: off
    reload_s: float = 5.0          # how often it looks for a new model snapshot or archive generation
    grace_s: float = 5.0           # SIGTERM: in-flight searches get this long to finish
    max_workers: int = 8

    def __post_init__(self) -> None:
        if self.reload_s <= 0 or self.grace_s < 0 or self.max_workers < 1:
            raise ValueError("search: reload_s must be > 0, grace_s >= 0 and max_workers >= 1")


@dataclass(frozen=True)
class SiteConfig:
    site: str
    federation_id: str
    coordinator: str               # host:port
    data: str                      # this site's HDF5 file (community layout)
    tls: SiteTls
    server_name: str = "localhost"  # name in the coordinator certificate
    state_dir: str = "state/site"
    threads: int = 1
    privacy: SitePrivacy = field(default_factory=SitePrivacy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    metrics_listen: str = ""       # "127.0.0.1:9465" exposes this site's metrics; empty: off
    rpc_timeout_s: float = 30.0
    search: SearchService = field(default_factory=SearchService)

    def __post_init__(self) -> None:
        if not SITE_NAME.match(self.site):
            raise ValueError(f"site={self.site!r}: use [a-z0-9-]{{1,63}}")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1")
        if self.privacy.epsilon_max <= 0:
            raise ValueError(f"privacy.epsilon_max={self.privacy.epsilon_max} must be > 0")


def load_config(path: str | Path) -> SiteConfig:
    """Load ``site.toml`` and check its files exist."""
    cfg = load_toml(SiteConfig, path)
    base = Path(path).resolve().parent
    files = {"tls.ca_cert": cfg.tls.ca_cert, "tls.cert": cfg.tls.cert, "tls.key": cfg.tls.key,
             "tls.signing_key": cfg.tls.signing_key, "data": cfg.data}
    for key, value in files.items():
        if not (base / value).is_file():
            raise SettingsError(f"{path}: {key} = {value!r}: no such file")
    return cfg
