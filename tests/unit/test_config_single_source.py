"""Configuration in one place: only streams/contracts/settings.py reads the environment, and the README's
Configuration table lists every variable it reads with the code's default. Both are source scans, so a new
``os.environ.get`` in a processor, or a new variable without a README row, fails here rather than in review."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from streams.contracts.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SETTINGS = "streams/contracts/settings.py"
PACKAGES = ("streams", "processors", "models", "monitoring")
ENV_NAME = re.compile(r"(?:STREAMSENSE|KAFKA)_[A-Z0-9_]+")

# Files that pass the environment on (a child process inherits it) or write to it; they must not read it.
PASS_THROUGH: dict[str, str] = {
    "streams/runtime/embedded.py": "the Tansu broker child process inherits our environment (RUST_LOG)",
    "streams/runtime/object_store.py": "the SeaweedFS child process inherits our environment, less AWS_*/S3_*",
    "streams/runtime/launcher.py": "a worker child process inherits our environment, plus its own app id",
}
# Files that still read the environment, each until a named change lands. Do not add to this list.
TEMPORARY_READERS: dict[str, str] = {}


def env_uses(source: str) -> list[tuple[int, str]]:
    """(line, "read" | "pass-through" | "write") for every use of os.environ / os.getenv in ``source``.

    Pass-through is ``{**os.environ, ...}`` (building a child's environment); writes are item assignment and
    deletion, ``update`` and ``setdefault``. Anything else (get, [], in, items, getenv, ``from os import
    environ``) reads the environment."""
    tree = ast.parse(source)
    os_names = {"os"} | {a.asname for n in ast.walk(tree) if isinstance(n, ast.Import)
                         for a in n.names if a.name == "os" and a.asname}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            uses += [(node.lineno, "read") for a in node.names if a.name in ("environ", "environb", "getenv")]
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in os_names):
            continue
        if node.attr in ("getenv", "getenvb"):
            uses.append((node.lineno, "read"))
        elif node.attr in ("environ", "environb"):
            parent = parents.get(node)
            if isinstance(parent, ast.Dict) and any(k is None and v is node for k, v in zip(parent.keys,
                                                                                         parent.values, strict=True)):
                uses.append((node.lineno, "pass-through"))
            elif (isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del)) or (
                isinstance(parent, ast.Attribute) and parent.attr in ("update", "setdefault")
            ):
                uses.append((node.lineno, "write"))
            else:
                uses.append((node.lineno, "read"))
    return sorted(uses)


def package_sources() -> dict[str, str]:
    return {
        path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if path.relative_to(REPO).as_posix() != SETTINGS
    }


def test_the_scanner_tells_reads_from_pass_through() -> None:
    source = "\n".join([
        "import os",
        "import os as o",
        "from os import environ",
        "a = os.environ.get('X')",
        "b = os.getenv('X')",
        "c = os.environ['X']",
        "d = 'X' in o.environ",
        "e = {**os.environ, 'X': '1'}",
        "os.environ['X'] = '1'",
        "os.environ.setdefault('X', '1')",
    ])
    assert env_uses(source) == [(3, "read"), (4, "read"), (5, "read"), (6, "read"), (7, "read"),
                                (8, "pass-through"), (9, "write"), (10, "write")]


def test_only_settings_reads_the_environment() -> None:
    offenders = []
    for rel, source in package_sources().items():
        for line, kind in env_uses(source):
            if kind == "read" and rel not in TEMPORARY_READERS:
                offenders.append(f"{rel}:{line}: reads the environment")
            if kind != "read" and rel not in PASS_THROUGH:
                offenders.append(f"{rel}:{line}: {kind} of the environment without a PASS_THROUGH entry")
    assert not offenders, (
        "only streams/contracts/settings.py (Settings.from_env) may read the environment; add a Settings field "
        "and pass the value in:\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize(("rel", "kind"), [*((f, "pass-through") for f in PASS_THROUGH),
                                           *((f, "read") for f in TEMPORARY_READERS)])
def test_allowlist_entries_are_still_needed(rel: str, kind: str) -> None:
    uses = env_uses((REPO / rel).read_text(encoding="utf-8"))
    wanted = {"read"} if kind == "read" else {"pass-through", "write"}
    assert any(k in wanted for _, k in uses), f"{rel} no longer needs its allowlist entry: remove it"


# --- the README's Configuration table -------------------------------------------------------------------


def settings_env_names() -> set[str]:
    """Every variable settings.py reads: its string literals that are whole STREAMSENSE_*/KAFKA_* names."""
    tree = ast.parse((REPO / SETTINGS).read_text(encoding="utf-8"))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and ENV_NAME.fullmatch(n.value)}


def readme_rows() -> list[tuple[list[str], list[str]]]:
    """(names, defaults) of each row of the README's Configuration table, backticks stripped; a bare "–"
    default (no value) is kept as one."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and ENV_NAME.search(cells[0]):
            shown = ["–"] if cells[1] == "–" else re.findall(r"`([^`]*)`", cells[1])
            rows.append((re.findall(r"`([^`]+)`", cells[0]), shown))
    return rows


def test_readme_configuration_table_lists_every_variable() -> None:
    documented = {name for names, _ in readme_rows() for name in names}
    missing = sorted(settings_env_names() - documented)
    assert not missing, f"README.md's Configuration table lacks {missing}: add a row for each"
    unknown = sorted(documented - settings_env_names())
    assert not unknown, f"README.md's Configuration table lists {unknown}, which Settings.from_env does not read"


def readme_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "–" if value is None else str(value)


def test_readme_defaults_match_the_code() -> None:
    """Rows for plain Settings fields (name -> field found in from_env's source) show the dataclass default."""
    source = (REPO / SETTINGS).read_text(encoding="utf-8")
    field_of = {name: f for f, name in re.findall(r"(\w+)=\w+(?:\.get)?\((?:env, )?\"([A-Z0-9_]+)\"", source)}
    defaults = {f.name: getattr(Settings(), f.name) for f in fields(Settings)}
    wrong = []
    for names, shown in readme_rows():
        if len(shown) != len(names):
            continue  # one default for several variables (e.g. "–" for all SASL settings)
        for name, text in zip(names, shown, strict=True):
            if name in field_of and field_of[name] in defaults and readme_value(defaults[field_of[name]]) != text:
                wrong.append(f"{name}: README says {text!r}, code says {readme_value(defaults[field_of[name]])!r}")
    assert field_of.keys() >= {"STREAMSENSE_MODEL_DIR", "STREAMSENSE_RECS_READ_AHEAD"}  # the regex still matches
    assert not wrong, "\n".join(wrong)
