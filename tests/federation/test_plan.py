"""The federation plan: typed at load, round-trips through its wire JSON, refuses bad configs in one line."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from coordinator.cli import main as coordinator_main
from coordinator.config import load_config
from federation.plan import FederationSettings, PrivacySettings, SecAggSettings, StatisticsEncoder
from pfmh_model.fedhap_config import FedHAPConfig
from pfmh_model.methods import DEFAULT_SHARE_MODE, Method, ShareMode
from pfmh_model.train_config import AUTO_WEIGHT, CONTRASTIVE_WITH_DP, CONTRASTIVE_WITHOUT_DP, LossWeights, TrainConfig
from proto.settings import PROTOCOL_VERSION, SettingsError, build
from security.accountant import AccountantKind
from security.dp_config import DPMode
from security.prg import PrgAlgorithm
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "config" / "coordinator.toml"


def _set(text: str, table: str, line: str) -> str:
    """``text`` with ``line`` (``key = value``) in the ``[federation.<table>]`` table, replacing that key there."""
    key = line.split(" =")[0]
    header = re.search(rf"^\[federation\.{re.escape(table)}\][^\n]*\n", text, re.M)
    assert header, f"the example has no [federation.{table}] table"
    end = re.compile(r"^\[", re.M).search(text, header.end())
    body = text[header.end():end.start() if end else len(text)]
    body = re.sub(rf"^{re.escape(key)} = .*\n", "", body, count=1, flags=re.M)
    return text[:header.end()] + line + "\n" + body + (text[end.start():] if end else "")


def _with(tmp_path: Path, table: str, line: str) -> Path:
    """The example coordinator.toml with ``line`` set in ``[federation.<table>]``, written to tmp_path."""
    path = tmp_path / "coordinator.toml"
    path.write_text(_set(EXAMPLE.read_text(), table, line))
    return path


def _federation_table(path: Path) -> dict:
    return tomllib.loads(path.read_text())["federation"]


def test_example_plan_is_fully_typed() -> None:
    # Execute
    plan = build(FederationSettings, _federation_table(EXAMPLE), "federation")
    # Assert: every enum and nested table is its type, not a string or a dict
    assert plan.method is Method.PFMH and plan.share_mode is ShareMode.PROTOTYPES
    assert isinstance(plan.train, TrainConfig) and isinstance(plan.train.weights, LossWeights)
    assert isinstance(plan.fedhap, FedHAPConfig)
    assert plan.secagg.prg is PrgAlgorithm.AES256_CTR
    assert plan.privacy.mode is DPMode.LOCAL and plan.privacy.accountant is AccountantKind.RDP
    assert plan.privacy.statistics_encoder is StatisticsEncoder.DP_SGD
    assert plan.train.bits == 32 and plan.train.personal_epochs == 5


def test_plan_round_trips_toml_json_plan(tmp_path: Path) -> None:
    # Prepare: a plan that sets non-default values in every table
    text = _set(EXAMPLE.read_text(), "privacy", 'accountant = "prv"').replace('method = "pfmh"', 'method = "fedhap"')
    text = _set(_set(text, "fedhap", "adversarial = 0.5"), "train.weights", "similarity = 0.5")
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    # Execute
    plan = build(FederationSettings, _federation_table(path), "federation")
    again = FederationSettings.from_json(plan.to_json())
    # Assert
    assert again == plan
    assert again.method is Method.FEDHAP and again.fedhap.adversarial == 0.5
    assert again.train.weights.similarity == 0.5 and again.privacy.accountant is AccountantKind.PRV
    assert json.loads(plan.to_json())["train"]["weights"]["similarity"] == 0.5


def test_default_share_mode_is_resolved_when_the_plan_is_loaded() -> None:
    # The library default, auto, is replaced by the mode it stands for (methods.resolve_share_mode) ...
    assert DEFAULT_SHARE_MODE is ShareMode.AUTO
    dp_on = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2)
    dp_off = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2,
                                privacy=PrivacySettings(mode="off"))
    fedhap = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2, method="fedhap",
                                privacy=PrivacySettings(mode="off"))
    assert dp_on.share_mode is ShareMode.PROTOTYPES and not dp_on.keeps_local_model
    assert dp_off.share_mode is ShareMode.PROTOTYPES_AND_MODEL and dp_off.keeps_local_model
    assert fedhap.share_mode is ShareMode.PROTOTYPES
    # ... so the sites receive a concrete mode, and an explicit one is kept
    assert json.loads(dp_off.to_json())["share_mode"] == "prototypes+model"
    assert FederationSettings.from_json(dp_off.to_json()) == dp_off
    kept = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2, share_mode="prototypes",
                              privacy=PrivacySettings(mode="off"))
    assert kept.share_mode is ShareMode.PROTOTYPES


def test_auto_contrastive_weight_is_resolved_by_the_plans_dp_mode(tmp_path: Path) -> None:
    # Prepare: one plan with DP, one without, neither naming the weight; one naming it; one naming it badly
    dp_on = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2)
    dp_off = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2,
                                privacy=PrivacySettings(mode="off"))
    named = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2,
                               train={"weights": {"contrastive": 2.5}})
    bad = tmp_path / "bad.toml"
    bad.write_text('[federation]\nfederation_id = "f"\nimage_dim = 2\ntext_dim = 2\nnum_classes = 2\n'
                   '[federation.train.weights]\ncontrastive = "strong"\n')
    # Assert: auto is 1 with DP and 3 without, the sites receive the number, and a named weight is kept
    assert TrainConfig().weights.contrastive == AUTO_WEIGHT
    with pytest.raises(ValueError, match="still \"auto\""):  # training refuses an unresolved weight
        _ = TrainConfig().weights.contrastive_weight
    assert dp_on.train.weights.contrastive == CONTRASTIVE_WITH_DP == 1.0
    assert dp_off.train.weights.contrastive == CONTRASTIVE_WITHOUT_DP == 3.0
    assert json.loads(dp_on.to_json())["train"]["weights"]["contrastive"] == 1.0
    assert FederationSettings.from_json(dp_on.to_json()) == dp_on
    assert named.train.weights.contrastive == 2.5
    with pytest.raises(SettingsError, match=r"contrastive='strong' is invalid: need a finite number >= 0 or \"auto\""):
        build(FederationSettings, _federation_table(bad), "federation")


def test_protocol_3_document_with_partial_tables_still_parses() -> None:
    # Prepare: what a coordinator sent before the plan was typed: train with only the keys its TOML set,
    # fedhap {}, enums as strings. The wire format is unchanged, so PROTOCOL_VERSION stays 3.
    old = {"federation_id": "f", "image_dim": 4, "text_dim": 3, "num_classes": 2, "method": "pfmh",
           "share_mode": "prototypes", "rounds": 2, "min_sites": 2, "train": {"bits": 16}, "fedhap": {},
           "secagg": {"prg": "chacha20"}, "privacy": {"mode": "off"}}
    # Execute
    plan = FederationSettings.from_json(json.dumps(old))
    # Assert
    assert PROTOCOL_VERSION == 3
    assert plan.train == TrainConfig(bits=16).resolved(dp=False) and plan.fedhap == FedHAPConfig()
    assert plan.secagg.prg is PrgAlgorithm.CHACHA20 and plan.privacy.mode is DPMode.OFF


def test_unknown_train_key_lists_every_train_config_field(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(SettingsError) as info:
        load_config(_with(tmp_path, "train", "bitz = 32"))
    # Assert: the known keys are TrainConfig's fields, read generically (issue-14 may add fields)
    known = ", ".join(sorted(f.name for f in dataclasses.fields(TrainConfig)))
    assert str(info.value) == f"{tmp_path / 'coordinator.toml'}: federation.train.bitz: unknown key (known: {known})"


BAD = [  # the bad configs of issue #15, each with the one line the coordinator now prints
    ("train", "bitz = 32", "federation.train.bitz: unknown key (known: batch_size, bits, "),
    ("privacy", 'mode = "lcoal"', "federation.privacy.mode: 'lcoal' is not one of: off, local, distributed"),
    ("privacy", "noise_multiplier = -1.0", "federation.privacy.noise_multiplier: noise_multiplier=-1.0 must be > 0"),
    ("privacy", "delta = 5.0", "federation.privacy.delta: delta=5.0 must be in (0, 1)"),
    ("secagg", 'prg = "rot13"', "federation.secagg.prg: 'rot13' is not one of: chacha20, aes256-ctr"),
    ("secagg", "fraction_bits = 99", "federation.secagg.fraction_bits: fraction_bits=99 must be an int in [0, 52]"),
    ("secagg", "fraction_bits = 50", "federation.secagg.fraction_bits: "),  # 1e7 * 2^50 >= 2^63: overflows
    ("privacy", 'accountant = "gdp"', "federation.privacy.accountant: 'gdp' is not one of: rdp, prv"),
    ("privacy", "delta = 0.0", "federation.privacy.delta: delta=0.0 must be in (0, 1)"),
    ("privacy", "dp_sgd_max_grad_norm = 0.0", "federation.privacy.dp_sgd_max_grad_norm: 0.0 must be a finite"),
    ("secagg", "threshold = -2", "federation.secagg.threshold: -2 must be an integer >= 0"),
    ("secagg", "threshold = 3", "federation.secagg.threshold: no round could run with a cohort of 2 sites"),
    ("secagg", "colluders = -5", "federation.secagg.colluders: -5 must be an integer >= -1"),
    ("train", "bits = 4", "federation.train: TrainConfig.bits=4 is invalid"),
    ("train", 'lr = "fast"', "federation.train.lr: expected a number, got 'fast'"),
]


@pytest.mark.parametrize(("table", "line", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_config_is_refused_in_one_line_with_exit_2(tmp_path: Path, capsys, table: str, line: str,
                                                       message: str) -> None:
    # Prepare
    path = _with(tmp_path, table, line)
    # Execute: the real CLI entry point
    code = coordinator_main(["serve", "--config", str(path)])
    # Assert: exit code 2, one line on stderr naming the file and the key path
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"pfmh-coordinator: error: {path}: {message}"), err


def test_refusal_from_a_fresh_process_has_no_traceback(tmp_path: Path) -> None:
    # Prepare
    path = _with(tmp_path, "secagg", 'prg = "rot13"')
    # Execute
    out = subprocess.run([sys.executable, "-m", "coordinator.cli", "serve", "--config", path.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    # Assert
    assert out.returncode == 2
    assert out.stderr == ("pfmh-coordinator: error: coordinator.toml: federation.secagg.prg: 'rot13' is not one of: "
                          "chacha20, aes256-ctr\n")


def test_min_sites_cannot_exceed_the_enrolled_sites(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(EXAMPLE.read_text().replace("min_sites = 2 ", "min_sites = 4 "))
    with pytest.raises(SettingsError, match=r"federation\.min_sites: 4 must be within 1\.\.3"):
        load_config(path)


def test_direct_construction_is_typed_and_checked() -> None:
    # Execute: benches and tests build plans in code; strings and tables are converted there too
    plan = FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2, method="fedavg",  # type: ignore[arg-type]
                              train={"bits": 16}, privacy=PrivacySettings(mode="off"))  # type: ignore[arg-type]
    # Assert
    assert plan.method is Method.FEDAVG and plan.train == TrainConfig(bits=16).resolved(dp=False) and plan.shares_model
    with pytest.raises(ValueError, match="delta"):
        PrivacySettings(delta=1.5)
    with pytest.raises(ValueError, match="fraction_bits"):
        SecAggSettings(fraction_bits=60)


def test_site_refuses_a_bad_settings_document() -> None:
    # Prepare: what a broken (or older, laxer) coordinator might send in JoinReply.settings_json
    good = json.loads(FederationSettings(federation_id="f", image_dim=2, text_dim=2, num_classes=2).to_json())
    good["privacy"]["delta"] = 5.0
    # Execute / Assert: the site checks the same rules and names the key
    with pytest.raises(SettingsError, match=r"^settings\.privacy\.delta: delta=5\.0 must be in \(0, 1\)"):
        FederationSettings.from_json(json.dumps(good))


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(re.sub(r"^num_classes = .*\n", "", EXAMPLE.read_text(), count=1, flags=re.M))
    with pytest.raises(SettingsError, match=r"coordinator\.toml: federation\.num_classes: required key is missing$"):
        load_config(path)
