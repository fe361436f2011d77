"""site.toml is typed and checked at load: the example loads, and every bad key is refused in one line (exit 2)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from participant.cli import main as participant_main
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "config" / "site-hospital-a.toml"


def _write(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert re.search(old, text, re.M), old
    path = tmp_path / "site.toml"
    path.write_text(re.sub(old, new, text, count=1, flags=re.M))
    return path


BAD = [
    (r"^threads = 1", "thread = 1", "thread: unknown key (known: coordinator, data, device, federation_id, "),
    (r'^coordinator = "coordinator:50051"', 'coordinator = "coordinator"',
     "coordinator: 'coordinator' is not host:port"),
    (r"^max_s = 30.0", "max_s = 0.1", "retry.max_s: 0.1 must be >= 0.5"),
    (r"^give_up_s = 900.0", "give_up_s = 0", "retry.give_up_s: 0.0 must be > 0"),
    (r"^epsilon_max = 8.0", "epsilon_max = -1.0", "privacy.epsilon_max: -1.0 must be > 0"),
    (r'^device = "cpu"', 'device = "gpu"', "device: 'gpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (r"^rpc_timeout_s = 30.0", "rpc_timeout_s = 0.0", "rpc_timeout_s: 0.0 must be > 0"),
    (r'^listen = "127.0.0.1:50061"', 'listen = "127.0.0.1:port"', "search.listen: '127.0.0.1:port' is not host:port"),
    (r"^reload_s = 5.0", "reload_s = 0.0", "search.reload_s: 0.0 must be > 0"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_site_config_is_refused_in_one_line(tmp_path: Path, capsys, old: str, new: str, message: str) -> None:
    # Prepare
    path = _write(tmp_path, old, new)
    # Execute: the real CLI (the refusal comes before any file, data or network access)
    code = participant_main(["join", "--site", "hospital-a", "--config", str(path)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"pfmh-participant: error: {path}: {message}"), err


def test_example_passes_the_typed_checks_until_its_files(tmp_path: Path, capsys) -> None:
    # Prepare: the example unchanged, in a folder without its TLS files and data
    path = _write(tmp_path, r"^threads = 1", "threads = 1")
    # Execute
    code = participant_main(["join", "--site", "hospital-a", "--config", str(path)])
    # Assert: every key is accepted; only the missing files are refused
    assert code == 2 and "tls.ca_cert = 'pki/hospital-a/ca.crt': no such file" in capsys.readouterr().err
