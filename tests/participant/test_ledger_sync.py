"""The ledger cross-check on the real code path: real site daemons, the real coordinator, DP on, mTLS on
127.0.0.1. Sites report only new ledger entries; the audit holds the ledgers against the round log; a site
whose ledger tail was cut between runs is refused at Join, before any upload (issue #12, item 6)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coordinator.audit_cli import main as audit_main
from participant.budget_cli import main as budget_main
from participant.ledger_sync import LedgerBehind
from proto import federation_pb2 as pb
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, with_rounds, write_site_files

SITES = ["site-a", "site-b"]
TRAIN = {"bits": 8, "hidden": 16, "width": 8, "personal_epochs": 1, "shared_epochs": 1, "seed": 2}


def _record_reports(daemon) -> list[pb.LedgerReport]:  # noqa: ANN001
    """Keep every LedgerReport the daemon sends (the real client still sends it)."""
    sent: list[pb.LedgerReport] = []
    call = daemon.client.call

    def spy(method: str, request, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if method == "ReportLedger":
            sent.append(request)
        return call(method, request, **kwargs)

    daemon.client.call = spy
    return sent


def _federation(tmp_path: Path):  # noqa: ANN202
    first = write_site_files(tmp_path, SITES, seed=3)[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=2, train=TRAIN, privacy="local",
                             dims=(first.image_dim, first.text_dim, first.num_classes))
    privacy = replace(cfg.federation.privacy, noise_multiplier=4.0)  # room for three rounds in epsilon_max 8
    return replace(cfg, federation=replace(cfg.federation, privacy=privacy),
                   server=replace(cfg.server, gather_s=0.5))


def test_cut_ledger_is_refused_at_join_and_reports_are_increments(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: two rounds with DP on, run to the end by real daemons
    torch.set_num_threads(1)
    cfg = _federation(tmp_path)
    state = tmp_path / "state" / "coordinator"
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [site_daemon(tmp_path, name, port) for name in SITES]
        reports = _record_reports(daemons[0])
        assert run_daemons(daemons, 240) == [0, 0]
        assert engine.state.completed_rounds == 2
    # Assert: round 1 reported the ledger from seq 0, round 2 only the entry after the verified head
    ledger = tmp_path / "state" / "site-a" / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    assert len(lines) == 2 and all('"kind":"dp_release"' in ln for ln in lines)
    assert [(r.first_seq, list(r.lines)) for r in reports] == [(0, lines[:1]), (1, lines[1:])]
    assert (state / "ledgers" / "site-a.jsonl").read_text().splitlines() == lines
    # Assert: the round log names both sites' inputs, and the audit cross-checks the ledgers with it
    history = json.loads((state / "rounds.json").read_text())["history"]
    assert [(h["outcome"], sorted(h["inputs"]), h["dp"]) for h in history] == [("completed", SITES, True)] * 2
    code = audit_main(["audit", "verify", "--state-dir", str(state), "--ca", str(tmp_path / "pki/ca/ca.crt")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "site 'site-a': matches the round log (input in 2 revealed sums" in out.out
    head = json.loads((state / "ledgers" / "heads.json").read_text())["site-a"]
    assert f"coordinator head 2:{head[1]}" in out.out

    # Prepare: between runs, site-a's ledger loses its last entry (a valid, shorter chain)
    ledger.write_text(lines[0] + "\n")
    identity = ["--ledger", str(ledger), "--identity", str(tmp_path / "pki" / "site-a")]
    assert budget_main(["budget", *identity]) == 0  # alone the cut cannot be seen ...
    assert "truncation: NOT checked" in capsys.readouterr().out
    assert budget_main(["budget", *identity, "--coordinator-head", f"2:{head[1]}"]) == 1  # ... with the head it can
    assert "ledger_tampered:truncated" in capsys.readouterr().err
    # Execute: the federation goes on for a third round; site-a joins again
    with coordinator(tmp_path, with_rounds(cfg, 3)) as (port, engine):
        started = engine.state.last_round_started
        daemon = site_daemon(tmp_path, "site-a", port)
        # Assert: refused at Join with one clear line, before training or any upload
        with pytest.raises(LedgerBehind, match=r"has 1 entries but the coordinator verified 2: it was cut") as err:
            daemon.run()
        daemon.client.close()
        assert "\n" not in str(err.value) and "refusing to train" in str(err.value)
        assert engine.state.last_round_started == started and not engine.runs
    assert ledger.read_text().splitlines() == lines[:1]  # nothing recorded, so nothing could have been uploaded
    assert (state / "ledgers" / "site-a.jsonl").read_text().splitlines() == lines
