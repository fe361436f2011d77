"""coordinator.toml validation: every refusal is a SettingsError naming the key, never a traceback."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.config import load_config
from pfmh_model.fedhap_config import FedHAPConfig
from proto.settings import SettingsError

BASE = """
sites = ["site-a", "site-b", "site-c"]
[tls]
ca_cert = "ca.crt"
cert = "tls.crt"
key = "tls.key"
crl = "crl.pem"
[federation]
federation_id = "fed"
image_dim = 8
text_dim = 6
num_classes = 3
"""


def write(tmp_path: Path, federation: str = "", extra: str = "") -> Path:
    for name in ("ca.crt", "tls.crt", "tls.key", "crl.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "coordinator.toml"
    path.write_text(BASE + federation + extra)
    return path


@pytest.mark.parametrize("method", ["pfmh", "fedavg", "fedhap"])
def test_each_method_loads(tmp_path: Path, method: str) -> None:
    privacy = "" if method != "fedavg" else '[federation.privacy]\nmode = "off"\n'
    cfg = load_config(write(tmp_path, f'method = "{method}"\n', privacy))
    assert cfg.federation.method == method


def test_fedhap_options_are_checked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'method = "fedhap"\n', "[federation.fedhap]\nadversarial = 0.5\n"))
    assert cfg.federation.fedhap == FedHAPConfig(adversarial=0.5)
    with pytest.raises(SettingsError, match=r"federation\.fedhap\.adversary: unknown key \(known: adversarial, "):
        load_config(write(tmp_path, 'method = "fedhap"\n', "[federation.fedhap]\nadversary = 0.5\n"))
    with pytest.raises(SettingsError, match="use method fedhap"):
        load_config(write(tmp_path, 'method = "pfmh"\n', "[federation.fedhap]\nadversarial = 0.5\n"))


@pytest.mark.parametrize(("federation", "extra", "message"), [
    ('method = "fedsgd"\n', "", "federation.method: 'fedsgd' is not one of: pfmh, fedavg"),
    ('method = "local"\n', "", "federation.method: 'local' is not federated: choose pfmh, fedavg, fedhap"),
    ('method = "fedavg"\n', '[federation.privacy]\nmode = "local"\n', "no DP mechanism"),
    ('method = "fedhap"\nshare_mode = "prototypes+model"\n', '[federation.privacy]\nmode = "local"\n',
     "without DP-SGD support"),
    ('share_mode = "everything"\n', "", "federation.share_mode: 'everything' is not one of: prototypes, "
                                         "prototypes+model"),
    ("min_sites = 4\n", "", "federation.min_sites: 4 must be within 1..3"),
])
def test_refusals(tmp_path: Path, federation: str, extra: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_config(write(tmp_path, federation, extra))


def test_missing_tls_file(tmp_path: Path) -> None:
    path = write(tmp_path)
    (tmp_path / "tls.key").unlink()
    with pytest.raises(SettingsError, match="tls.key = 'tls.key': no such file"):
        load_config(path)


@pytest.mark.parametrize(("privacy", "message"), [
    ('mode = "distributed"\ncolluding_sites = 2', r"privacy.colluding_sites = 2 >= the secure-aggregation threshold 2"),
    ('mode = "lcoal"', r"federation\.privacy\.mode: 'lcoal' is not one of: off, local, distributed"),
    ('statistics_encoder = "public"', r"federation\.privacy\.statistics_encoder: 'public' is not one of"),
    ('frozen_encoder_sha256 = "ab"', r"frozen_encoder_sha256: is set but"),
    ('colluding_sites = -1', r"colluding_sites=-1"),
])
def test_dp_settings_that_cannot_give_the_target_sigma_are_refused(tmp_path: Path, privacy: str, message: str) -> None:
    # 3 sites: the default threshold for a cohort of 3 is t = 2, so c = 2 colluders leave no honest share
    with pytest.raises(SettingsError, match=message):
        load_config(write(tmp_path, "", f"[federation.privacy]\n{privacy}\n"))


def test_distributed_refusal_names_the_keys_and_the_cohort(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_config(write(tmp_path, "min_sites = 2\n", '[federation.privacy]\nmode = "distributed"\n'
                                                       'colluding_sites = 2\n'))
    text = str(info.value)
    assert "coordinator.toml" in text and "cohort of 2 sites" in text and "federation.secagg.threshold" in text


def test_distributed_with_one_colluder_below_the_threshold_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "", '[federation.privacy]\nmode = "distributed"\ncolluding_sites = 1\n'
                                          '[federation.secagg]\ncolluders = 1\n'))
    assert cfg.federation.privacy.colluding_sites == 1


def test_distributed_noise_cannot_assume_more_colluders_than_secure_aggregation_tolerates(tmp_path: Path) -> None:
    # 3 sites, default threshold 2: the consistency-checked protocol tolerates no colluder (2t > m + c)
    with pytest.raises(SettingsError, match=r"colluding_sites = 1 exceeds the 0 colluders.*secagg.colluders"):
        load_config(write(tmp_path, "", '[federation.privacy]\nmode = "distributed"\ncolluding_sites = 1\n'))
