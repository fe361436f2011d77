"""The ledger cross-check on the real code path: real site daemons, the real coordinator, DP on, mTLS on
127.0.0.1. Sites report only new ledger entries; the audit holds the ledgers against the round log; a site
whose ledger tail was cut between runs is refused at Join, before any upload (issue #12, item 6)."""
from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coordinator.audit_cli import main as audit_main
from participant.budget_cli import main as budget_main
from participant.ledger_sync import LedgerBehind
from tests.netfed import coordinator, coordinator_config, run_daemons, site_daemon, with_rounds, write_site_files

SITES = ["site-a", "site-b"]
TRAIN = {"bits": 8, "hidden": 16, "width": 8, "personal_epochs": 1, "shared_epochs": 1, "seed": 2}


def _record_calls(daemon) -> list[tuple[str, object]]:  # noqa: ANN001
    """Keep every (method, request) the daemon's client sends (the real client still sends it)."""
    sent: list[tuple[str, object]] = []
    call = daemon.client.call

    def spy(method: str, request, **kwargs):  # noqa: ANN001, ANN003, ANN202
        sent.append((method, request))
        return call(method, request, **kwargs)

    daemon.client.call = spy
    return sent


def _federation(tmp_path: Path):  # noqa: ANN202
    first = write_site_files(tmp_path, SITES, seed=3)[0]
    cfg = coordinator_config(tmp_path, SITES, rounds=2, train=TRAIN, privacy="local", train_timeout_s=90,
                             phase_timeout_s=30, dims=(first.image_dim, first.text_dim, first.num_classes))
    return replace(cfg, server=replace(cfg.server, gather_s=0.5))


def test_cut_ledger_is_refused_at_join_and_reports_are_increments(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: two rounds with DP on, run to the end by real daemons
    torch.set_num_threads(1)
    cfg = _federation(tmp_path)
    state = tmp_path / "state" / "coordinator"
    with coordinator(tmp_path, cfg) as (port, engine):
        daemons = [site_daemon(tmp_path, name, port, epsilon_max=1e6) for name in SITES]
        calls = _record_calls(daemons[0])
        assert run_daemons(daemons, 240) == [0, 0]
        assert engine.state.completed_rounds == 2
    # Assert: round 1 reported the ledger from seq 0, round 2 only the entries after the verified head
    ledger = tmp_path / "state" / "site-a" / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    rounds = [json.loads(ln)["record"]["round"] for ln in lines]
    n1 = rounds.count(1)
    assert n1 >= 1 and rounds == [1] * n1 + [2] * (len(lines) - n1) and '"kind":"dp_release"' in lines[-1]
    reports = [r for m, r in calls if m == "ReportLedger"]
    assert [(r.first_seq, list(r.lines)) for r in reports] == [(0, lines[:n1]), (n1, lines[n1:])]
    assert (state / "ledgers" / "site-a.jsonl").read_text().splitlines() == lines
    # Assert: the round log names both sites' inputs, and the audit cross-checks the ledgers with it
    history = json.loads((state / "rounds.json").read_text())["history"]
    assert [(h["outcome"], sorted(h["inputs"]), h["dp"]) for h in history] == [("completed", SITES, True)] * 2
    code = audit_main(["audit", "verify", "--state-dir", str(state), "--ca", str(tmp_path / "pki/ca/ca.crt")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "site 'site-a': matches the round log (its input in 2 revealed sums)" in out.out
    head = json.loads((state / "ledgers" / "heads.json").read_text())["site-a"]
    assert f"coordinator head {len(lines)}:{head[1]}" in out.out

    # Prepare: between runs, site-a's ledger loses its last entry (a valid, shorter chain)
    ledger.write_text("".join(f"{ln}\n" for ln in lines[:-1]))
    identity = ["--ledger", str(ledger), "--identity", str(tmp_path / "pki" / "site-a")]
    assert budget_main(["budget", *identity]) == 0  # alone the cut cannot be seen ...
    assert "truncation: NOT checked" in capsys.readouterr().out
    # ... with the coordinator's head it can
    assert budget_main(["budget", *identity, "--coordinator-head", f"{len(lines)}:{head[1]}"]) == 1
    assert "ledger_tampered:truncated" in capsys.readouterr().err
    # Execute: the federation goes on for a third round; site-a joins again
    with coordinator(tmp_path, with_rounds(cfg, 3)) as (port, engine):
        started = engine.state.last_round_started
        daemon = site_daemon(tmp_path, "site-a", port, epsilon_max=1e6)
        calls = _record_calls(daemon)
        outcome: list[BaseException | int] = []

        def run() -> None:
            try:
                outcome.append(daemon.run())
            except Exception as exc:  # noqa: BLE001 - the refusal is what this test expects
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
        if thread.is_alive():  # it joined and waits for a round: stop it, then fail
            daemon.stop.set()
            thread.join(60)
        daemon.client.close()
        # Assert: refused at Join with one clear line, before training or any upload
        assert outcome and isinstance(outcome[0], LedgerBehind), f"the site did not refuse: {outcome}"
        message = str(outcome[0])
        assert f"has {len(lines) - 1} entries but the coordinator verified {len(lines)}: it was cut" in message
        assert "\n" not in message and "refusing to train" in message
        assert [m for m, _ in calls] == ["Join"]
        assert engine.state.last_round_started == started and not engine.runs
    assert ledger.read_text().splitlines() == lines[:-1]  # nothing recorded, so nothing could have been uploaded
    assert (state / "ledgers" / "site-a.jsonl").read_text().splitlines() == lines
