"""No unsafe deserialization, no server open beyond the machine by default, and the Kafka security settings on
every client, checked over the source.

Why a source scan: a checkpoint, a state record or a model file is data someone else may be able to write (a
shared state directory, a topic, a downloaded model). Unpickling it runs whatever code it names, so every load
in the project must be one that cannot: ``torch.load(weights_only=True)``, ``np.load`` without pickles,
``yaml.safe_load``, safetensors. The scan walks the syntax tree, so a new call site is caught the day it lands.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "streams", "processors", "monitoring", "bench")
FORBIDDEN = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("marshal", "loads"),
             ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("yaml", "load"), ("yaml", "unsafe_load"),
             ("shelve", "open")}


def _calls(source: str) -> list[tuple[str, str, ast.Call]]:
    """(module-ish name, attribute, call) for every ``x.attr(...)`` call, x a plain name (``torch.load``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            out.append((node.func.value.id, node.func.attr, node))
    return out


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def unsafe_loads(source: str) -> list[str]:
    """What in ``source`` could unpickle untrusted bytes, as readable findings."""
    found = []
    for mod, attr, call in _calls(source):
        where = f"line {call.lineno}: {mod}.{attr}"
        if (mod, attr) in FORBIDDEN:
            found.append(f"{where} (unpickles)")
        elif mod == "torch" and attr == "load" and _keyword(call, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        elif mod in ("np", "numpy") and attr == "load" and _keyword(call, "allow_pickle") not in (None, False):
            found.append(f"{where} with allow_pickle")
    return found


def test_no_load_in_the_project_can_unpickle() -> None:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    assert len(files) > 50  # the scan sees the project
    found = {str(p.relative_to(REPO)): unsafe_loads(p.read_text()) for p in files}
    assert {path: hits for path, hits in found.items() if hits} == {}


def test_the_scan_finds_each_unsafe_form() -> None:
    bad = """
import pickle, torch, numpy as np, yaml
pickle.loads(b)
torch.load(f)
torch.load(f, weights_only=False)
np.load(f, allow_pickle=True)
yaml.load(s)
"""
    good = "torch.load(f, weights_only=True)\nnp.load(f, allow_pickle=False)\nnp.load(f)\nyaml.safe_load(s)\n"
    assert len(unsafe_loads(bad)) == 5 and unsafe_loads(good) == []


def test_servers_bind_the_loopback_address_by_default() -> None:
    """The worker's web server, the dashboard, the embedded broker and the CLI's --host flags."""
    from streams.cli import parser
    from streams.contracts.settings import Settings
    from streams.dashboard.server import Dashboard
    from streams.runtime.embedded import EmbeddedBroker

    assert Settings().web_host == "127.0.0.1" and Settings.from_env({}).web_host == "127.0.0.1"
    for server in (Dashboard, EmbeddedBroker):
        assert inspect.signature(server.__init__).parameters["host"].default == "127.0.0.1", server
    cli = parser()
    hosts = [a.default for sub in cli._subparsers._group_actions[0].choices.values() for a in sub._actions
             if a.dest == "host"]
    assert hosts and set(hosts) == {"127.0.0.1"}


# client class → the function whose result must be spread into it (it carries the SASL/TLS settings)
KAFKA_CLIENTS = {"KafkaConsumer": "client_kwargs", "KafkaProducer": "client_kwargs",
                 "KafkaAdminClient": "client_kwargs", "AIOKafkaConsumer": "aiokafka_kwargs",
                 "AIOKafkaProducer": "aiokafka_kwargs"}


def clients_without_security(source: str) -> list[str]:
    """kafka-python clients built without ``**client_kwargs(...)``, aiokafka ones without
    ``**aiokafka_kwargs(...)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in KAFKA_CLIENTS):
            continue
        spread = [kw.value for kw in node.keywords if kw.arg is None]
        wanted = KAFKA_CLIENTS[node.func.id]
        if not any(isinstance(v, ast.Call) and getattr(v.func, "id", None) == wanted for v in spread):
            found.append(f"line {node.lineno}: {node.func.id}")
    return found


def test_every_kafka_client_gets_the_security_settings() -> None:
    """Faust's clients get them through ``faust_credentials`` (tests/unit/test_deadletter_settings.py)."""
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    found = {str(p.relative_to(REPO)): clients_without_security(p.read_text()) for p in files}
    assert {path: hits for path, hits in found.items() if hits} == {}
    assert clients_without_security("KafkaConsumer('t', bootstrap_servers=b)\n") == ["line 1: KafkaConsumer"]
    assert clients_without_security("KafkaProducer(**client_kwargs(s, b), acks='all')\n") == []
    assert clients_without_security("AIOKafkaConsumer(**client_kwargs(s, b))\n") == ["line 1: AIOKafkaConsumer"]
    assert clients_without_security("AIOKafkaConsumer(**aiokafka_kwargs(s, b), group_id=g)\n") == []
