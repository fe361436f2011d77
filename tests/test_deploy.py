"""Structural checks of deploy/ and docs/DEPLOY.md (Docker and Kubernetes do not run here).

Every YAML/JSON file parses; every command line is accepted by the real argparse parser; the PKI
commands of the docs run; each container's file system is rebuilt from its mounts and the real config
loaders load its TOML from it; ports, names and paths agree across files; every PromQL expression
names only metrics (and labels) that coordinator.metrics.CoordinatorMetrics registers.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from coordinator.config import load_config as load_coordinator_config
from coordinator.metrics import CoordinatorMetrics
from participant.config import load_config as load_site_config
from security.pki_verify import load_certificate
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
DOCS = REPO_ROOT / "docs" / "DEPLOY.md"
CONFIG_DIR = "/etc/pfmh"


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the real parser of the console script ``argv[0]`` (from pyproject.toml)."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]} is not a console script of pyproject.toml"
    module = importlib.import_module(scripts[argv[0]].split(":")[0])
    parser = getattr(module, "build_parser", None) or module._parser
    try:
        return parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{shlex.join(argv)} is rejected by the real {argv[0]} parser")


def _doc_blocks(lang: str) -> list[tuple[str, str]]:
    """``(marker, code)`` of the fenced ``lang`` blocks of docs/DEPLOY.md (marker: a preceding <!-- test: x -->)."""
    pattern = rf"(?:<!-- test: (\w+) -->\n)?```{lang}\n(.*?)```"
    return [(m.group(1) or "", m.group(2)) for m in re.finditer(pattern, DOCS.read_text(), re.S)]


def _doc_commands() -> list[list[str]]:
    cmds = []
    for _, code in _doc_blocks("bash"):
        for line in code.splitlines():
            if m := re.search(r"\bpfmh-(ca|coordinator|participant)\b", line):
                cmds.append(shlex.split(line[m.start():], comments=True))
    return cmds


def _pfmh_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("command", [""])[0].startswith("pfmh-")}


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml_docs(COMPOSE / "docker-compose.yml")[0]


@pytest.fixture(scope="module")
def k8s() -> dict[str, Any]:
    kust = _yaml_docs(K8S / "kustomization.yaml")[0]
    objects = [doc for res in kust["resources"] for doc in _yaml_docs(K8S / res)]
    return {"kustomization": kust, "objects": objects,
            "by_kind": lambda kind: {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the PKI commands of docs/DEPLOY.md for real, into a temporary folder."""
    from participant.cli import main as participant_main
    from security.ca_cli import main as ca_main

    root = tmp_path_factory.mktemp("pki") / "pki"
    block = next(code for marker, code in _doc_blocks("bash") if marker == "pki")
    run = {"pfmh-ca": ca_main, "pfmh-participant": participant_main}  # the CSR flow: enroll, sign, install
    for line in block.splitlines():
        argv = shlex.split(line.replace("deploy/compose/pki", str(root)), comments=True)
        assert argv and argv[0] in run and run[argv[0]](argv[1:]) == 0, line
    return root


@pytest.fixture(scope="module")
def metrics() -> dict[str, set[str]]:
    """Sample names of CoordinatorMetrics, each with its label names (``le`` for histogram buckets)."""
    registry = CollectorRegistry()
    m = CoordinatorMetrics(registry, sites=["hospital-a"])
    labels = {w._name: set(w._labelnames) for w in vars(m).values()  # private but stable prometheus_client API
              if isinstance(w, MetricWrapperBase)}
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[family.type]
        for suffix in suffixes:
            names[family.name + suffix] = labels[family.name] | ({"le"} if suffix == "_bucket" else set())
    return names


def test_every_file_parses() -> None:
    # Execute
    yamls = sorted(DEPLOY.rglob("*.y*ml"))
    parsed = [_yaml_docs(p) for p in yamls]
    dashboards = [json.loads(p.read_text()) for p in DEPLOY.rglob("*.json")]
    tomls = [tomllib.loads(p.read_text()) for p in (DEPLOY / "config").glob("*.toml")]
    # Assert
    assert len(yamls) >= 10 and all(parsed) and len(dashboards) == 1 and len(tomls) == 4


def test_command_lines_match_the_real_parsers(compose: dict[str, Any], k8s: dict[str, Any]) -> None:
    # Prepare
    commands = [svc["command"] for svc in _pfmh_services(compose).values()]
    commands += [c["command"] for d in k8s["by_kind"]("Deployment").values()
                 for c in d["spec"]["template"]["spec"]["containers"]]
    commands += _doc_commands()
    # Execute
    parsed = [_parse_cli(cmd) for cmd in commands]
    # Assert
    assert len(parsed) >= 8 + 10
    joins = [a for a in parsed if getattr(a, "command", None) == "join"]
    assert sorted({a.site for a in joins}) == ["hospital-a", "hospital-b", "hospital-c"]
    audits = [a for a in parsed if getattr(a, "command", None) == "audit"]
    assert {a.audit_command for a in audits} == {"verify", "report"}
    assert any(getattr(a, "command", None) == "budget" for a in parsed)


def _compose_root(tmp: Path, service: dict[str, Any], pki: Path) -> Path:
    """The container's files: each bind mount copied to its target (generated pki/ and data/ from tmp)."""
    root = tmp / "root"
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if not source.startswith("."):
            continue  # a named volume
        rel = Path(source).relative_to(".") if source.startswith("./") else None
        if rel is not None and rel.parts[0] == "pki":
            src = pki.joinpath(*rel.parts[1:])
        elif rel is not None and rel.parts[0] == "data":
            src = tmp / "data" / rel.name
            src.parent.mkdir(exist_ok=True)
            src.write_bytes(b"placeholder")  # load_config only checks the file exists
        else:
            src = (COMPOSE / source).resolve()
            assert src.exists() and DEPLOY in src.parents, f"mount source {source} is not a file of deploy/"
        dst = root / target.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)  # copies: load_config resolves symlinks
    return root


def test_compose_containers_load_their_configs(compose: dict[str, Any], pki: Path, tmp_path: Path) -> None:
    # Prepare
    services = compose["services"]
    pfmh = _pfmh_services(compose)
    generated = {line.strip() for line in (DEPLOY / ".gitignore").read_text().splitlines()
                 if line.strip() and not line.startswith("#")}
    # Execute
    loaded = {}
    for name, svc in pfmh.items():
        args = _parse_cli(svc["command"])
        root = _compose_root(tmp_path / name, svc, pki)
        loader = load_coordinator_config if args.command == "serve" else load_site_config
        loaded[name] = (args, loader(root / str(args.config).lstrip("/")))
    # Assert: the coordinator's ports are the ones published and scraped; sites dial its service name
    _, coord = loaded.pop("coordinator")
    assert {"compose/pki/", "compose/data/"} <= generated
    assert f"{_port(coord.server.listen)}:{_port(coord.server.listen)}" in services["coordinator"]["ports"]
    assert str(_port(coord.metrics_listen)) in services["coordinator"]["expose"]
    assert sorted(loaded) == sorted(coord.sites)
    for name, (args, site) in loaded.items():
        assert site.site == args.site == name and site.federation_id == coord.federation.federation_id
        assert site.coordinator == f"coordinator:{_port(coord.server.listen)}" and site.server_name == "coordinator"
        assert "coordinator" in services[name]["depends_on"]


def test_pki_names_match_the_configs(pki: Path) -> None:
    # Prepare
    coord = tomllib.loads((DEPLOY / "config" / "coordinator.toml").read_text())
    sites = [tomllib.loads(p.read_text()) for p in sorted((DEPLOY / "config").glob("site-*.toml"))]
    # Execute
    cert = load_certificate(pki / "coordinator" / "tls.crt")
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    ca = load_certificate(pki / "ca" / "ca.crt")
    federation = ca.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)[0].value
    # Assert
    assert {s["server_name"] for s in sites} <= set(dns)
    assert federation == coord["federation"]["federation_id"] == sites[0]["federation_id"]
    assert sorted(s["site"] for s in sites) == sorted(coord["sites"]) == sorted(p.name for p in pki.glob("hospital-*"))


def _k8s_root(tmp: Path, deployment: dict[str, Any], k8s: dict[str, Any], pki: Path) -> tuple[Path, list[str]]:
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    configmaps, claims = k8s["by_kind"]("ConfigMap"), k8s["by_kind"]("PersistentVolumeClaim")
    secrets = {g["name"]: dict(f.split("=", 1) for f in g["files"]) for g in k8s["kustomization"]["secretGenerator"]}
    root = tmp / "root"
    for mount in container["volumeMounts"]:
        volume, dst = volumes[mount["name"]], root / mount["mountPath"].lstrip("/")
        if "configMap" in volume:
            data = configmaps[volume["configMap"]["name"]]["data"]
            files = {mount["subPath"]: data[mount["subPath"]]} if "subPath" in mount else data
            dst.parent.mkdir(parents=True, exist_ok=True)
            for key, text in files.items():
                (dst if "subPath" in mount else dst / key).parent.mkdir(parents=True, exist_ok=True)
                (dst if "subPath" in mount else dst / key).write_text(text)
        elif "secret" in volume:
            assert mount.get("readOnly") is True
            dst.mkdir(parents=True, exist_ok=True)
            for key, source in secrets[volume["secret"]["secretName"]].items():
                assert source.startswith("pki/") and Path(source).name == key, source  # as pfmh-ca writes them
                shutil.copy(pki / source.removeprefix("pki/"), dst / key)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert claim in claims
            dst.mkdir(parents=True, exist_ok=True)
            if claim.endswith("-data"):  # the operator copies <site>.h5 into it (docs/DEPLOY.md)
                (dst / f"{claim.removeprefix('pfmh-').removesuffix('-data')}.h5").write_bytes(b"placeholder")
        else:
            assert "emptyDir" in volume
    return root, container["command"]


def test_k8s_containers_load_their_configs(k8s: dict[str, Any], pki: Path, tmp_path: Path) -> None:
    # Prepare
    deployments = k8s["by_kind"]("Deployment")
    service = k8s["by_kind"]("Service")["coordinator"]
    # Execute
    loaded = {}
    for name, dep in deployments.items():
        root, command = _k8s_root(tmp_path / name, dep, k8s, pki)
        args = _parse_cli(command)
        loader = load_coordinator_config if args.command == "serve" else load_site_config
        loaded[name] = (dep, args, loader(root / str(args.config).lstrip("/")))
    # Assert: Service, containerPorts, annotations and TOML ports agree
    dep, _, coord = loaded.pop("pfmh-coordinator")
    template = dep["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc": _port(coord.server.listen), "metrics": _port(coord.metrics_listen)}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
    assert sorted(name.removeprefix("pfmh-") for name in loaded) == sorted(coord.sites)
    for name, (_, args, site) in loaded.items():
        assert site.site == args.site == name.removeprefix("pfmh-")
        assert site.coordinator == f"{service['metadata']['name']}:{ports['grpc']}"
    assert all(o["metadata"].get("namespace", "pfmh") == "pfmh" for o in k8s["objects"])
    assert "k8s/pki/" in (DEPLOY / ".gitignore").read_text()


def test_configmaps_equal_the_example_configs(k8s: dict[str, Any]) -> None:
    # Execute
    configmaps = k8s["by_kind"]("ConfigMap")
    # Assert
    assert configmaps["pfmh-coordinator-config"]["data"]["coordinator.toml"] == \
        (DEPLOY / "config" / "coordinator.toml").read_text()
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        assert configmaps[f"pfmh-{site}-config"]["data"]["site.toml"] == \
            (DEPLOY / "config" / f"site-{site}.toml").read_text()


def _check_promql(expr: str, metrics: dict[str, set[str]], legend: str = "") -> set[str]:
    used = set(re.findall(r"\bpfmh_[a-z0-9_]+", expr))
    unknown = used - set(metrics)
    assert not unknown, f"{expr!r} names metrics {sorted(unknown)} that coordinator.metrics does not register"
    labels = set().union(*(metrics[n] for n in used)) if used else set()
    grouped = {lab.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
               for lab in group.split(",") if lab.strip()}
    grouped |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    assert grouped <= labels, f"{expr!r} uses labels {sorted(grouped - labels)} its metrics do not have"
    return used


def test_dashboard_queries_use_only_coordinator_metrics(metrics: dict[str, set[str]]) -> None:
    # Prepare
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pfmh.json").read_text())
    datasource = _yaml_docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]
    uid = datasource["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    # Execute
    used = set()
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            used |= _check_promql(target["expr"], metrics, target.get("legendFormat", ""))
    # Assert: every metric family is on a panel, ids are unique, panels do not overlap
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in metrics}
    assert families == {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = [(x, y) for p in dashboard["panels"] for g in [p["gridPos"]]
             for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])]
    assert len(cells) == len(set(cells)) and max(x for x, _ in cells) < 24
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("communication", "privacy", "round", "dropout", "refused", "latency", "duration", "map"):
        assert topic in titles


def test_prometheus_scrapes_the_coordinator_and_alerts_are_valid(compose: dict[str, Any],
                                                                 metrics: dict[str, set[str]]) -> None:
    # Prepare
    prom = _yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    alerts = _yaml_docs(DEPLOY / "prometheus" / "alerts.yml")[0]
    coord = tomllib.loads((DEPLOY / "config" / "coordinator.toml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    # Execute
    (job,) = prom["scrape_configs"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    # Assert
    assert targets == [f"coordinator:{_port(coord['metrics_listen'])}"]
    assert all(mounts[f] == f"../prometheus/{Path(f).name}" for f in prom["rule_files"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "../prometheus/prometheus.yml"
    for rule in rules:
        _check_promql(rule["expr"], metrics)
        for job_name in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job_name == job["job_name"]


def test_grafana_provisioning_matches_compose(compose: dict[str, Any]) -> None:
    # Prepare
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provider = _yaml_docs(DEPLOY / "grafana" / "provisioning" / "dashboards" / "pfmh.yml")[0]["providers"][0]
    datasource = _yaml_docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]
    # Assert
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in compose["services"]["prometheus"]["ports"]


def test_dockerfile_copies_the_packages(compose: dict[str, Any]) -> None:
    # Prepare
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    build = compose["x-pfmh-image"]["build"]
    # Execute
    copied = [src for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]
    # Assert
    assert all((REPO_ROOT / src).exists() for src in copied)
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= set(copied) and (COMPOSE / build["context"]).resolve() == REPO_ROOT
    assert (REPO_ROOT / build["dockerfile"]).is_file()
    # BuildKit sends only what the ignore file lets through ("*", then "!name/" exceptions): a package
    # copied but not let through fails the build at its COPY line.
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    let_through = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore and set(copied) <= let_through, sorted(set(copied) - let_through)
    assert "torch==2.13.0" in dockerfile and "torch==2.13.0" in pyproject["project"]["dependencies"]


def test_data_snippet_of_the_docs_runs(tmp_path: Path) -> None:
    # Prepare: the docs' snippet, on the tiny preset and into tmp_path
    (_, code), = [b for b in _doc_blocks("python") if b[0] == "data"]
    code = code.replace('PRESET = "small"', 'PRESET = "tiny"')
    code = code.replace('OUT = Path("deploy/compose/data")', f"OUT = Path({str(tmp_path)!r})")
    # Execute
    exec(compile(code, "DEPLOY.md", "exec"), {})  # noqa: S102 - our own documentation snippet
    # Assert
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["hospital-a.h5", "hospital-b.h5", "hospital-c.h5"]
