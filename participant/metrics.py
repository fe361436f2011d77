"""A site's own Prometheus metrics (a small set; the coordinator holds the federation-wide ones)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SiteMetrics:
    """Metrics of one site daemon, on a registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter("pfmh_site_rounds_total", "Rounds this site took part in, by outcome", ["outcome"],
                              registry=registry)
        self.bytes = Counter("pfmh_site_bytes_total", "Bytes exchanged with the coordinator", ["direction"],
                             registry=registry)
        self.epsilon_spent = Gauge("pfmh_site_epsilon_spent", "Epsilon this site has spent", registry=registry)
        self.epsilon_max = Gauge("pfmh_site_epsilon_max", "This site's epsilon budget", registry=registry)
        self.budget_exhausted = Gauge("pfmh_site_budget_exhausted",
                                      "1 once the site stopped uploading because its budget would be exceeded",
                                      registry=registry)
        self.map = Gauge("pfmh_site_map", "mAP of this site's queries against its own archive", registry=registry)
        self.searches_with_local_model = Gauge(
            "pfmh_site_searches_with_local_model",
            "1 when the site searches with the shared model it trained locally, 0 with the aggregate "
            "(pfmh with prototypes+model; pfmh_model.search_choice)", registry=registry)
        self.round_seconds = Gauge("pfmh_site_last_round_seconds", "Wall time of the last round at this site",
                                   registry=registry)
        for outcome in ("completed", "abandoned"):
            self.rounds.labels(outcome)
        for direction in ("sent", "received"):
            self.bytes.labels(direction)
