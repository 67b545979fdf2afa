"""Which layer may import which (docs/architecture.md), read from the source with `ast`: every
import counts, at the top of a module or inside a function, relative ones resolved."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CORES = ("siprec_server.sip", "siprec_server.siprec", "siprec_server.media")
"""The sans-IO cores: protocol and media logic with no I/O of their own."""
CORE_MAY_USE = ("siprec_server.logs",)
"""Outside the cores, only the logging facade (the SIP agent logs what it tolerates, by id)."""
COMPOSITION_ROOT = "siprec_server.app"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """The modules `path` imports, as absolute dotted names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import module` imports pkg.module as well as pkg.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def modules(*packages: str, root: Path = ROOT) -> Iterable[tuple[str, Path]]:
    for package in packages:
        for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
            yield module_name(path, root), path


def refused(module: str, imported: str) -> str | None:
    """Why `module` must not import `imported`; None when it may."""
    if under(module, *CORES):
        if under(imported, "asyncpg", "aiohttp", "asyncio", "socket", "storage", "api"):
            return "a sans-IO core does no I/O and knows no storage or HTTP"
        if under(imported, "siprec_server") and not under(imported, *CORES, *CORE_MAY_USE):
            return "a sans-IO core imports nothing outside the cores"
    if under(module, "storage"):
        if under(imported, "api"):
            return "storage knows nothing of HTTP"
        if under(imported, "siprec_server.services", COMPOSITION_ROOT, "siprec_server.cli"):
            return "storage sits below the services, the command line and the composition root"
    if under(module, "siprec_server.services") and under(imported, "siprec_server.cli"):
        return "services serve the command line, not the other way round"
    if (under(imported, "api") and not under(module, "api")
            and module != COMPOSITION_ROOT):
        return "only the API and the composition root import the HTTP layer"
    return None


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for module, path in modules("siprec_server", "storage", "api", root=root):
        for imported in sorted(imports_of(path, root)):
            reason = refused(module, imported)
            if reason is not None:
                found.append(f"{module} imports {imported}: {reason}")
    return found


def test_every_layer_imports_only_downwards() -> None:
    assert len(list(modules("siprec_server", "storage", "api"))) > 50  # the tree was read
    assert violations() == []


@pytest.mark.parametrize(("module", "imported"), [
    ("siprec_server.siprec.session", "siprec_server.sip.message"),
    ("siprec_server.siprec.sdp", "siprec_server.media.srtp_suites"),
    ("siprec_server.services.accounts", "storage.users"),
    ("siprec_server.cli", "siprec_server.services.accounts"),
    ("siprec_server.app", "api.app"),
    ("api.recordings_api", "storage.search"),
    ("storage.search", "siprec_server.numbers"),
    ("siprec_server.sip.agent", "siprec_server.logs"),
])
def test_allowed(module: str, imported: str) -> None:
    assert refused(module, imported) is None


@pytest.mark.parametrize(("module", "imported"), [
    ("siprec_server.media.jitter", "asyncpg"),
    ("siprec_server.sip.agent", "asyncio"),
    ("siprec_server.siprec.session", "storage.recordings"),
    ("siprec_server.media.call", "siprec_server.config"),
    ("storage.search", "api.views"),
    ("storage.users", "siprec_server.services.accounts"),
    ("siprec_server.cli", "api.auth_api"),
    ("siprec_server.services.accounts", "api.app"),
    ("siprec_server.recorder", "api.metrics"),
])
def test_refused(module: str, imported: str) -> None:
    assert refused(module, imported) is not None


def test_imports_are_found_wherever_they_are_written(tmp_path: Path) -> None:
    package = tmp_path / "siprec_server" / "media"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "late.py").write_text(
        "from . import codecs\nfrom .errors import MediaError\n"
        "def f():\n    import asyncpg\n    from storage import blobs\n"
    )
    assert imports_of(package / "late.py", tmp_path) >= {
        "siprec_server.media.codecs", "siprec_server.media.errors", "asyncpg", "storage.blobs"}
    assert violations(tmp_path) == [
        "siprec_server.media.late imports asyncpg: a sans-IO core does no I/O and knows no "
        "storage or HTTP",
        "siprec_server.media.late imports storage: a sans-IO core does no I/O and knows no "
        "storage or HTTP",
        "siprec_server.media.late imports storage.blobs: a sans-IO core does no I/O and knows "
        "no storage or HTTP",
    ]
