"""The one writer of coordinator and site TOML: the demo, the soak and the tests all write their configs here.

:func:`coordinator_document` and :func:`site_document` build a config as a mapping in the standard file
layout of a local federation (one folder holding ``pki/`` from ``pfmh-ca``, ``data/`` and ``state/``;
every path relative to the folder the config lives in); :func:`toml_text` turns any such mapping into TOML
and :func:`write_toml` writes it atomically. Keys and their meaning are the daemons' config schema
(``coordinator.config``, ``participant.config``; every key is in ``deploy/config/``); this module only
writes them, the daemons check them when they load.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from durable.atomic_file import atomic_write

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def _string(text: str) -> str:
    # A JSON string is a TOML basic string, except that TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf") if not math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return "[" + ", ".join(_value(v, f"{where}[{k}]") for k, v in enumerate(value)) + "]"
    raise TypeError(f"{where} = {value!r}: a config value is a bool, int, float, str or a list of them")


def toml_text(doc: Mapping[str, Any], *, comment: str = "") -> str:
    """``doc`` as TOML: scalars and lists first, then each nested mapping as a ``[table]``; None is left out.

    Raises:
        TypeError: a value that is not a bool, int, float, str, list of them or mapping (names its key path).
    """
    lines = [f"# {line}" for line in comment.splitlines()]

    def table(mapping: Mapping[str, Any], path: tuple[str, ...]) -> None:
        scalars = [(k, v) for k, v in mapping.items() if v is not None and not isinstance(v, Mapping)]
        if path and (scalars or not any(isinstance(v, Mapping) for v in mapping.values())):
            lines.extend(["", "[" + ".".join(_key(p) for p in path) + "]"])
        lines.extend(f"{_key(k)} = {_value(v, '.'.join((*path, k)))}" for k, v in scalars)
        for k, v in mapping.items():
            if isinstance(v, Mapping):
                table(v, (*path, k))

    table(doc, ())
    return "\n".join(lines).lstrip("\n") + "\n"


def write_toml(path: Path | str, doc: Mapping[str, Any], *, comment: str = "") -> Path:
    """Write ``toml_text(doc)`` atomically to ``path``; returns the path."""
    path = Path(path)
    atomic_write(path, toml_text(doc, comment=comment).encode("utf-8"))
    return path


def party_tls(name: str, *, pki_dir: str = "pki", signing_key: bool = False, crl: bool = True) -> dict[str, str]:
    """The ``[tls]`` table of ``name`` (``coordinator`` or a site id) in a ``pfmh-ca`` PKI folder."""
    tls = {"ca_cert": f"{pki_dir}/{name}/ca.crt" if signing_key else f"{pki_dir}/ca/ca.crt",
           "cert": f"{pki_dir}/{name}/tls.crt", "key": f"{pki_dir}/{name}/tls.key"}
    if signing_key:
        tls["signing_key"] = f"{pki_dir}/{name}/signing.key"
    if crl:
        tls["crl"] = f"{pki_dir}/ca/crl.pem"
    return tls


def coordinator_document(*, sites: Sequence[str], federation: Mapping[str, Any],
                         server: Mapping[str, Any] | None = None, state_dir: str = "state/coordinator",
                         pki_dir: str = "pki", metrics_listen: str | None = None) -> dict[str, Any]:
    """A ``coordinator.toml`` as a mapping.

    Args:
        sites: the enrolled site ids.
        federation: the ``[federation]`` table, its ``train``/``privacy``/``secagg`` sub-tables included.
        server: the ``[server]`` table (listen address, timeouts); the coordinator's defaults where None.
        state_dir: the coordinator's state folder.
        pki_dir: the PKI folder (``pfmh-ca init --dir``), relative to the config's folder.
        metrics_listen: ``host:port`` of the Prometheus endpoint, or None for none.
    """
    return {"sites": list(sites), "state_dir": state_dir, "metrics_listen": metrics_listen,
            "tls": party_tls("coordinator", pki_dir=pki_dir), "server": dict(server or {}),
            "federation": dict(federation)}


def site_document(*, site: str, federation_id: str, coordinator: str, data: str, state_dir: str | None = None,
                  pki_dir: str = "pki", tls: Mapping[str, str] | None = None, crl: bool = True,
                  privacy: Mapping[str, Any] | None = None, **keys: Any) -> dict[str, Any]:
    """A ``site.toml`` as a mapping.

    Args:
        site: the site id (its certificate's name).
        federation_id: the federation it joins.
        coordinator: ``host:port`` of the coordinator.
        data: the site's HDF5 file.
        state_dir: the site's state folder (``state/<site>`` where None).
        pki_dir: the PKI folder holding ``<site>/`` (its keys, certificate and CA certificate).
        tls: the whole ``[tls]`` table instead of the PKI folder's paths.
        crl: whether ``[tls]`` names the CA's revocation list.
        privacy: the ``[privacy]`` table (``epsilon_max``, ``require_dp``, ...).
        keys: any other top-level key or table (``threads``, ``server_name``, ``search``, ...).
    """
    return {"site": site, "federation_id": federation_id, "coordinator": coordinator, "data": data,
            "state_dir": state_dir or f"state/{site}", **keys,
            "tls": dict(tls) if tls is not None else party_tls(site, pki_dir=pki_dir, signing_key=True, crl=crl),
            **({"privacy": dict(privacy)} if privacy is not None else {})}
