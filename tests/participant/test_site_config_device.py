"""A site's ``device`` setting: CPU by default, malformed values refused when the config is built."""
from __future__ import annotations

import re

import pytest

from participant.config import SiteConfig, SiteTls

TLS = SiteTls(ca_cert="ca.crt", cert="tls.crt", key="tls.key", signing_key="sign.key")


def _config(**extra: object) -> SiteConfig:
    return SiteConfig(site="site-a", federation_id="f", coordinator="127.0.0.1:1", data="d.h5", tls=TLS,
                      **extra)  # type: ignore[arg-type]


def test_device_defaults_to_cpu_and_takes_auto_and_cuda_n() -> None:
    assert _config().device == "cpu"
    assert [_config(device=d).device for d in ("auto", "cuda", "cuda:1")] == ["auto", "cuda", "cuda:1"]


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "CUDA"])
def test_malformed_device_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"device: {bad!r}")):
        _config(device=bad)
