"""The site daemon: join, then for every round train locally, privatise, mask, upload, apply the result.

Orchestration only: training is ``pfmh_model``, DP and masking are ``security``, the wire is
``participant.client``. State that must survive a crash (one trainer snapshot holding the weights,
the last round and the global prototypes; the ledger) is written atomically after every round, and a
restarted site resumes from it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
from prometheus_client import CollectorRegistry

from federation.layout import upload_layout
from federation.peers import PeerVerifier
from federation.plan import FederationSettings
from federation.round_codec import JoinAccepted, RoundOffer
from federation.secagg import secagg_config
from federation.site_round import SiteRound
from participant.client import CoordinatorClient, CoordinatorError, RoundAbandoned, Stopped
from participant.config import SiteConfig
from participant.ledger_sync import LedgerReporter, require_coordinator_head
from participant.local_release import LocalRelease, load_frozen_encoder
from participant.metrics import SiteMetrics
from participant.privacy import PROTOTYPE_MECHANISM, SitePrivacy
from pfmh_model.atomic_file import atomic_path
from pfmh_model.data import MultiModalDataset, Split, load_h5
from pfmh_model.evaluation import mean_average_precision
from pfmh_model.local_round import site_batch_seed
from pfmh_model.methods import SearchModel, shared_lr_is_constant
from pfmh_model.partition import hold_out
from pfmh_model.search_choice import SearchAverage, next_search_model, site_search_choice
from pfmh_model.server_step import initial_prototypes
from pfmh_model.trainer_factory import make_trainer
from pfmh_model.training import flatten_state, unflatten_state
from proto import federation_pb2 as pb
from proto.settings import PROTOCOL_VERSION
from security.dp_cohort import noise_cohort
from security.errors import BudgetExceeded, SecurityError, UnsafeConfiguration
from security.pki_verify import load_certificate, load_crl
from security.secagg_client import SecAggClient
from security.signing import SigningKey

logger = logging.getLogger(__name__)


class SiteMismatch(Exception):
    """This site cannot take part: its data or software does not match the federation (fatal)."""


@dataclass
class RoundReport:
    """What the site prints and reports after a round."""

    round: int
    completed: bool
    map: float | None
    epsilon: float
    bytes_sent: int
    bytes_received: int
    seconds: float
    detail: str = ""


def round_moved_on(exc: CoordinatorError) -> bool:
    """True when a refusal means the round closed or ended before this site's message arrived.

    A slow site (training past the train timeout, a long pause, a restart) sends into a phase
    that has closed or a round that has ended; that costs it the round, not its membership.
    """
    return exc.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)


def split_validation(data: MultiModalDataset, settings: FederationSettings,
                     site_index: int) -> tuple[MultiModalDataset, Split | None]:
    """The records a site trains on, and those it holds out to choose its search model where it chooses
    (``search_model = "validated"`` with ``FederationSettings.keeps_local_model``); the rows the simulation
    holds out for this site."""
    chooses = settings.keeps_local_model and settings.search_model is SearchModel.VALIDATED
    if not chooses or settings.validation_fraction == 0:
        return data, None
    kept, slices = hold_out([data], settings.validation_fraction, seed=settings.train.seed, site_indices=[site_index])
    return kept[0], slices[0]


class SiteDaemon:
    """One site of the federation.

    Args:
        cfg: the site config.
        base: folder that relative paths in ``cfg`` are taken from.
        stop: set it to leave after the current step (SIGTERM handler).
        on_round: called with each ``RoundReport`` (the CLI prints them).
    """

    def __init__(self, cfg: SiteConfig, *, base: Path, stop: threading.Event | None = None,
                 on_round=None, registry: CollectorRegistry | None = None) -> None:  # noqa: ANN001
        self.cfg, self.base = cfg, base
        self.stop = stop or threading.Event()
        self.on_round = on_round or (lambda report: None)
        self.state_dir = base / cfg.state_dir
        # Private when we create it: the snapshot and index are derived from the site's records.
        # An existing folder (a mounted volume) keeps the permissions its operator gave it.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.bytes = {"sent": 0, "received": 0}
        # True while the site only computes (building the trainer, local training): that holds no wait that
        # could notice ``stop``, so the CLI's signal handler raises ``Stopped`` there at once.
        self.interruptible = False
        self.coordinator_head: tuple[int, str] = (0, "")  # the ledger head the coordinator verified (from Join)
        self.metrics = SiteMetrics(registry or CollectorRegistry())
        self.metrics.epsilon_max.set(cfg.privacy.epsilon_max)
        self.client = CoordinatorClient(cfg, base, on_bytes=self._count, stop=self.stop)
        self.data: MultiModalDataset = load_h5(base / cfg.data)
        self.ca_cert = load_certificate(base / cfg.tls.ca_cert)
        self.crl = load_crl(base / cfg.tls.crl, ca_cert=self.ca_cert) if cfg.tls.crl else None
        self.signing_key = SigningKey.load(base / cfg.tls.signing_key, passphrase=None)
        self.peers = PeerVerifier(self.ca_cert, self.crl, on_untrusted=lambda peer, exc: logger.warning(
            "%s: %s's certificate is not trusted: %s", cfg.site, peer, exc))

    def _count(self, kind: str, sent: int, received: int) -> None:
        self.bytes["sent"] += sent
        self.bytes["received"] += received
        self.metrics.bytes.labels("sent").inc(sent)
        self.metrics.bytes.labels("received").inc(received)

    # ------------------------------------------------------------------ setup
    def join(self) -> FederationSettings:
        d = self.data
        reply = self.client.call("Join", pb.JoinRequest(
            federation_id=self.cfg.federation_id, protocol_version=PROTOCOL_VERSION,
            num_train_records=len(d.train), image_dim=d.image_dim, text_dim=d.text_dim, num_classes=d.num_classes))
        joined = JoinAccepted.from_proto(reply)
        settings = joined.settings
        if self.cfg.site not in joined.enrolled_sites:
            raise SiteMismatch(f"{self.cfg.site} is not among the enrolled sites {list(joined.enrolled_sites)}")
        self.site_index = sorted(joined.enrolled_sites).index(self.cfg.site)
        self.coordinator_head = joined.ledger_head
        with atomic_path(self.state_dir / "settings.json") as tmp:  # for `search` after the run
            tmp.write_text(settings.to_json())
        logger.info("%s joined federation %s (%d enrolled sites)", self.cfg.site, settings.federation_id,
                    len(joined.enrolled_sites))
        return settings

    def _setup(self, settings: FederationSettings) -> None:
        self.settings = settings
        self.interruptible = True  # until the ledger opens
        # held-out training records that decide the search model (None: none held out)
        self.data, self.validation = split_validation(self.data, settings, self.site_index)
        if self.validation is not None:
            logger.info("%s holds out %d of its training records to choose its search model", self.cfg.site,
                        len(self.validation))
        torch.set_num_threads(self.cfg.threads)
        self.trainer = make_trainer(settings.train, image_dim=settings.image_dim, text_dim=settings.text_dim,
                                    num_classes=settings.num_classes, **LocalRelease.dp_models(settings),
                                    batch_seed=site_batch_seed(settings.train.seed, self.site_index),
                                    method=settings.method, fedhap=settings.fedhap, device=self.cfg.device)
        self.trainer.constant_shared_lr = shared_lr_is_constant(settings.method, settings.share_mode)
        frozen = self.cfg.privacy.frozen_encoder
        self.frozen_encoder = load_frozen_encoder(  # before any training or restore: the common initial weights
            self.trainer.personal, self.base / frozen if frozen else None, settings.privacy.frozen_encoder_sha256
        ) if settings.privacy.mode != "off" and settings.privacy.statistics_encoder == "frozen" else None
        bits = self.trainer.config.bits
        self.layout = upload_layout(settings, shared_size=flatten_state(self.trainer.shared_state()).size
                                    if settings.shares_model else None)
        self.prototypes = initial_prototypes(settings.num_classes, bits, seed=self.trainer.config.seed,
                                             method=settings.method)
        self.interruptible = False  # from here on the ledger is open
        self.privacy = SitePrivacy(settings.privacy, epsilon_max=self.cfg.privacy.epsilon_max,
                                   ledger_path=self.state_dir / "ledger.jsonl", signing_key=self.signing_key,
                                   site=self.cfg.site)
        try:  # a cut or restored ledger would rebuild a smaller epsilon: refuse before training
            entries, head_hash = self.coordinator_head
            require_coordinator_head(self.privacy.ledger, entries=entries, head_hash=head_hash,
                                     path=self.state_dir / "ledger.jsonl")
        except SecurityError:
            self.privacy.close()
            raise
        self.ledger_reporter = LedgerReporter(self.client, settings.federation_id, self.privacy.ledger,
                                              verified=self.coordinator_head[0])
        self.release = LocalRelease(settings, self.trainer, self.privacy, self.layout,
                                    frozen_encoder=self.frozen_encoder)
        self.privacy.encoder_chain = self.release.chain
        if self.cfg.privacy.require_dp and not self.privacy.enabled:
            raise SecurityError("the federation's DP mode is 'off' but this site requires DP "
                                "(privacy.require_dp = true in its config); not joining")
        self.secagg_config = secagg_config(settings, vector_length=self.layout.length)
        self.secagg = SecAggClient(self.cfg.site, signing_key=self.signing_key, config=self.secagg_config)
        self.after_round = self.completed_rounds = 0
        # With the shared model federated: what this site searched with after its last finished round (None
        # before one, and in prototype mode), and a validated site's average of its blends
        # (search_choice.next_search_model).
        self.searching: dict | None = None
        self.search_average = SearchAverage()
        self._restore()

    def _restore(self) -> None:
        """Resume from ``trainer.pt``: weights, the last finished round and the global prototypes."""
        snapshot = self.state_dir / "trainer.pt"
        if not snapshot.is_file():
            return
        progress = self.trainer.load_snapshot(snapshot)
        self.after_round = int(progress.get("after_round", 0))
        self.completed_rounds = int(progress.get("completed_rounds", 0))
        if progress.get("prototypes") is not None:
            self.prototypes = np.asarray(progress["prototypes"], dtype=np.float64)
        # The snapshot's shared model is what the site searched with; snapshots from before the average start
        # it afresh (nothing to refuse).
        if self.settings.keeps_local_model and self.completed_rounds > 0:
            self.searching = self.trainer.shared_state()
        if progress.get("search_average") is not None:
            self.search_average = SearchAverage(progress["search_average"],
                                                int(progress.get("search_average_rounds", 0)))
        logger.info("%s resumed after round %d", self.cfg.site, self.after_round)

    def _checkpoint(self) -> None:
        # One file, so the round counter and prototypes can never disagree with the weights.
        self.trainer.save_snapshot(self.state_dir / "trainer.pt", extra={
            "after_round": self.after_round, "completed_rounds": self.completed_rounds,
            "prototypes": self.prototypes.tolist(), "search_average": self.search_average.state,
            "search_average_rounds": self.search_average.rounds})

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Take part until the federation finishes, the budget is spent, or ``stop`` is set."""
        self._setup(self.join())
        reason = "stopped by its operator"
        while not self.stop.is_set():
            try:
                config = RoundOffer.from_proto(self.client.call("WaitForRound", pb.WaitForRoundRequest(
                    federation_id=self.settings.federation_id, after_round=self.after_round),
                    timeout_s=self.cfg.rpc_timeout_s + 15))
            except Stopped:
                break
            if config.status == pb.FINISHED:
                logger.info("%s: the federation has finished", self.cfg.site)
                reason = "federation finished"
                break
            if config.status != pb.READY:
                continue
            try:
                try:
                    self._round(config)
                except CoordinatorError as exc:
                    if not round_moved_on(exc):
                        raise
                    raise RoundAbandoned(f"the coordinator moved on without this site ({exc})") from exc
            except SiteMismatch as exc:  # fatal: say so to the coordinator, which stops waiting for us
                self._leave(str(exc))
                raise
            except Stopped:  # mid-round: this site takes no further part in the round
                self.secagg.abort()
                self._restore_search_model()
                break
            except BudgetExceeded as exc:
                logger.error("%s stops uploading: %s", self.cfg.site, exc)
                self.on_round(RoundReport(config.round, False, None, self.privacy.spent, 0, 0, 0.0,
                                          f"budget: {exc}"))
                reason = f"privacy budget: {exc}"
                self.metrics.budget_exhausted.set(1)
                break
            except (RoundAbandoned, SecurityError) as exc:
                self.secagg.abort()
                self._restore_search_model()
                self.metrics.rounds.labels("abandoned").inc()
                logger.warning("%s: round %d abandoned: %s", self.cfg.site, config.round, exc)
                self.on_round(RoundReport(config.round, False, None, self.privacy.spent, 0, 0, 0.0, str(exc)))
            self.after_round = config.round
            self._checkpoint()
        self._leave(reason)
        self.build_index()
        self.privacy.close()
        self.client.close()
        return 0

    def _leave(self, reason: str) -> None:
        try:
            self.client.call("Leave", pb.LeaveRequest(federation_id=self.settings.federation_id, reason=reason),
                             timeout_s=5, retry=False)
        except Exception as exc:  # noqa: BLE001 - best effort: the coordinator may already be gone
            logger.info("could not tell the coordinator we leave: %s", exc)

    def _apply_global(self, prototypes: np.ndarray | None, model: np.ndarray | None) -> None:
        if prototypes is not None:
            self.prototypes = prototypes
        if model is not None:
            self.trainer.load_shared_state(unflatten_state(model, self.trainer.shared_state()))

    def _noise_cohort(self, cohort_size: int) -> int:
        """Distributed mode's m for this round: the SecAgg threshold t less the tolerated colluders c."""
        if self.settings.privacy.mode != "distributed":
            return 1
        return noise_cohort(threshold=self.secagg_config.plan(cohort_size).threshold,
                            colluding_sites=self.settings.privacy.colluding_sites)

    def _train(self, cohort_m: int) -> np.ndarray:
        """Local training; returns this round's upload vector (DP noise already added where on)."""
        return self.release.compute(self.data.train, self.prototypes, noise_cohort=cohort_m)

    def _round(self, config: RoundOffer) -> None:
        started = time.perf_counter()
        sent0, received0 = self.bytes["sent"], self.bytes["received"]
        number = config.round
        if config.vector_length != self.layout.length:
            raise SiteMismatch(f"round {number} expects {config.vector_length} values, this site's model gives "
                               f"{self.layout.length}: the site and the coordinator build different models "
                               "(different software versions?)")
        self._apply_global(config.global_prototypes, config.shared_model)
        round_prototypes = self.prototypes  # what this round trains towards
        releases = self.release.planned(len(self.data.train))
        try:
            self.privacy.check(releases, number)  # refuse before training, and before anything leaves
        except UnsafeConfiguration as exc:  # the same in every round: skipping would leave the others waiting
            raise SiteMismatch(f"{self.cfg.site} cannot take part under the federation's privacy settings: "
                               f"{exc}") from exc
        cohort_m = self._noise_cohort(len(config.cohort))
        # DP-SGD is charged when it runs: an abandoned round still leaves its trained encoder, whose outputs
        # the next upload releases.
        training = [r for r in releases if r.mechanism != PROTOTYPE_MECHANISM]
        if training:
            self.privacy.record(training, number, what_without_dp=self.release.not_covered())
        self.interruptible = True
        try:
            vector = self._train(cohort_m)
        finally:
            self.interruptible = False
        local_state = self.trainer.shared_state() if self.settings.keeps_local_model else None

        epsilons: list[float] = []  # the prototype release's charge, made just before the masked input leaves

        def before_send(point: str) -> None:
            if point == "masked_input":
                epsilons.append(self.privacy.record([r for r in releases if r.mechanism == PROTOTYPE_MECHANISM],
                                                    number, what_without_dp=self.release.not_covered(),
                                                    noise_cohort=cohort_m))

        secagg_round = SiteRound(secagg=self.secagg, transport=self.client, peers=self.peers, config=config,
                                 federation_id=self.settings.federation_id,
                                 consistency_check=self.settings.secagg.consistency_check, before_send=before_send)
        result = secagg_round.run(vector)
        epsilon = epsilons[-1]
        told = secagg_round.told
        self.privacy.record_sum(number, contributors=len(told.survivors) if told else 0, noise_cohort=cohort_m)
        self._apply_global(result.prototypes, result.model)
        searching = self._choose_search_model(local_state, round_prototypes) if local_state is not None else ""
        self.completed_rounds += 1
        map_value = self.evaluate()
        self._report(number, map_value)
        self.metrics.rounds.labels("completed").inc()
        self.metrics.epsilon_spent.set(epsilon)
        self.metrics.round_seconds.set(time.perf_counter() - started)
        if map_value is not None:
            self.metrics.map.set(map_value)
        self.on_round(RoundReport(number, True, map_value, epsilon, self.bytes["sent"] - sent0,
                                  self.bytes["received"] - received0, time.perf_counter() - started,
                                  f"{len(result.survivors)} survivors{searching}"))

    def _choose_search_model(self, local_state: dict, prototypes: np.ndarray) -> str:
        """Load what this site searches with until the next round: its local model (``search_model = "local"``),
        or its validated choice, the aggregate or the average of its blends over the rounds (the next round's
        offer brings the aggregate back for training). Returns a note for the round report."""
        if self.settings.search_model is SearchModel.LOCAL:
            choice, searching, note = SearchModel.LOCAL, local_state, ""
        else:
            chosen = site_search_choice(self.trainer, local_state, self.validation, prototypes)
            choice = chosen.model
            note = "" if chosen.local_score is None else \
                f", prototype margin {chosen.local_score:.3f} local vs {chosen.aggregate_score:.3f} aggregate"
            searching, self.search_average = next_search_model(self.search_average, chosen)
            if searching is not None:  # the validated local candidate is a blend (search_choice.LOCAL_BLEND)
                note = f" (blended with the aggregate, averaged over {self.search_average.rounds} rounds){note}"
        if searching is not None:
            self.trainer.load_shared_state(searching)
        self.searching = self.trainer.shared_state()
        self.metrics.searches_with_local_model.set(int(choice is SearchModel.LOCAL))
        return f"; searching with the {choice.value} model{note}"

    def _restore_search_model(self) -> None:
        """After a round cut short, search with the model of the last finished round again, not with the one
        training left half-way (the next round's offer brings the aggregate for training)."""
        if self.searching is not None:
            self.trainer.load_shared_state(self.searching)

    # ------------------------------------------------------------------ evaluation, reports, index
    def evaluate(self) -> float | None:
        """This site's queries against its own archive, with the shared model's binary codes."""
        d = self.data
        if len(d.query) == 0 or len(d.database) == 0:
            return None
        value = mean_average_precision(self.trainer.encode(d.query, model="shared"),
                                       self.trainer.encode(d.database, model="shared"),
                                       d.query.labels, d.database.labels)
        return None if np.isnan(value) else float(value)

    def _report(self, number: int, map_value: float | None) -> None:
        self.client.call("ReportMetrics", pb.SiteMetrics(
            federation_id=self.settings.federation_id, round=number, bits=self.trainer.config.bits,
            map=map_value if map_value is not None else 0.0, epsilon_spent=self.privacy.spent,
            epsilon_max=self.privacy.epsilon_max, noise_multiplier=self.settings.privacy.noise_multiplier))
        self.ledger_reporter.report()  # only the entries the coordinator has not verified yet

    def build_index(self) -> Path:
        """The site's archive (``participant.archive``) under the final shared model, for search."""
        from participant.archive_ops import index_after_federation

        return index_after_federation(self.state_dir, self.data)
