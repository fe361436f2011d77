"""Prometheus metrics of the coordinator (DESIGN.md section 4), on a registry passed in.

Label cardinality is bounded: ``site`` takes only enrolled site ids (anything else is recorded
as ``unknown``), ``kind`` only RPC method names, ``reason`` a fixed set of codes.
"""
from __future__ import annotations

from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Phases last seconds to many minutes (local training happens inside the advertise phase).
PHASE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
ROUND_BUCKETS_S = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class CoordinatorMetrics:
    """All coordinator metrics; methods are the only way daemon code touches them."""

    def __init__(self, registry: CollectorRegistry, *, sites: Collection[str]) -> None:
        self.registry = registry
        self._sites = frozenset(sites)
        self.bytes_received = Counter("pfmh_bytes_received_total", "Request bytes received, by site and message kind",
                                      ["site", "kind"], registry=registry)
        self.bytes_sent = Counter("pfmh_bytes_sent_total", "Response bytes sent, by site and message kind",
                                  ["site", "kind"], registry=registry)
        self.rounds_started = Counter("pfmh_rounds_started_total", "Rounds started", registry=registry)
        self.rounds_completed = Counter("pfmh_rounds_completed_total", "Rounds completed", registry=registry)
        self.rounds_aborted = Counter("pfmh_rounds_aborted_total", "Rounds aborted, by reason", ["reason"],
                                      registry=registry)
        self.dropouts = Counter("pfmh_dropouts_total", "Sites that dropped out of a round, by site and phase",
                                ["site", "phase"], registry=registry)
        self.auth_failures = Counter("pfmh_auth_failures_total", "Refused calls, by reason", ["reason"],
                                     registry=registry)
        self.exclusions = Counter("pfmh_site_exclusions_total", "Sites excluded from later rounds for misbehaving, "
                                  "by site and offence", ["site", "offence"], registry=registry)
        self.refused = Counter("pfmh_refused_messages_total", "Messages refused at the door after a signature or "
                               "replay check, by site and kind", ["site", "kind"], registry=registry)
        self.round_failures = Counter("pfmh_round_failures_total", "Rounds ended by an unexpected exception in the "
                                      "coordinator (each aborted, nothing revealed), by exception type",
                                      ["exception"], registry=registry)
        self.rejected = Counter("pfmh_rejected_messages_total", "Messages rejected by validation, by kind",
                                ["kind"], registry=registry)
        self.round_seconds = Histogram("pfmh_round_duration_seconds", "Wall time of completed rounds",
                                       buckets=ROUND_BUCKETS_S, registry=registry)
        self.phase_seconds = Histogram("pfmh_phase_duration_seconds", "Wall time of each protocol phase",
                                       ["phase"], buckets=PHASE_BUCKETS_S, registry=registry)
        self.current_round = Gauge("pfmh_current_round", "Number of the round in progress (or last)",
                                   registry=registry)
        self.completed_rounds = Gauge("pfmh_completed_rounds", "Rounds completed so far", registry=registry)
        self.live_sites = Gauge("pfmh_live_sites", "Sites seen within the liveness window", registry=registry)
        self.cohort_size = Gauge("pfmh_cohort_size", "Sites in the current round's cohort", registry=registry)
        self.epsilon_spent = Gauge("pfmh_epsilon_spent", "Epsilon spent per site (as reported)", ["site"],
                                   registry=registry)
        self.epsilon_remaining = Gauge("pfmh_epsilon_remaining", "Epsilon budget left per site", ["site"],
                                       registry=registry)
        self.noise_multiplier = Gauge("pfmh_noise_multiplier", "DP noise multiplier per site", ["site"],
                                      registry=registry)
        self.site_map = Gauge("pfmh_site_map", "Last reported retrieval mAP per site", ["site", "bits"],
                              registry=registry)
        self.upload_bytes = Gauge("pfmh_round_upload_bytes", "Masked-input bytes per site in the last round",
                                  registry=registry)
        for site in self._sites:  # every series exists from the start, so dashboards have data at once
            self.bytes_received.labels(site, "Join")
            self.dropouts.labels(site, "masked_input")
            self.refused.labels(site, "AdvertiseKeys")
            self.exclusions.labels(site, "advertisement")

    def site(self, site: str) -> str:
        return site if site in self._sites else "unknown"

    def record_rpc(self, site: str, kind: str, received: int, sent: int) -> None:
        label = self.site(site)
        self.bytes_received.labels(label, kind).inc(received)
        self.bytes_sent.labels(label, kind).inc(sent)

    def record_site_report(self, site: str, *, bits: int, map_value: float, epsilon_spent: float,
                           epsilon_max: float, noise_multiplier: float) -> None:
        label = self.site(site)
        self.site_map.labels(label, str(bits)).set(map_value)
        self.epsilon_spent.labels(label).set(epsilon_spent)
        self.epsilon_remaining.labels(label).set(max(epsilon_max - epsilon_spent, 0.0))
        self.noise_multiplier.labels(label).set(noise_multiplier)
