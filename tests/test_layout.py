"""The layout's rules, checked on the source: which package may import what, a domain without HTTP,
and comments that stand alone (no citation of a document outside this repository)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["varedit", "jobs", "api", "worker", "serve", "varedit_client"]


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__main__.py"
    )


def _imported_after(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(sorted(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return {name.split(".")[0] for name in ast.literal_eval(out.stdout)}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("jobs", {"torch", "varedit", "api", "worker", "serve", "fastapi", "starlette"}),
        ("api", {"torch", "varedit", "worker", "serve"}),
        ("varedit_client", {"torch", "varedit", "jobs", "api", "worker", "serve", "sqlalchemy", "celery"}),
    ],
)
def test_packages_import_only_what_their_wing_may(package: str, forbidden: set[str]) -> None:
    modules = [m for m in _modules(package) if m != "api.main" or package == "api"]
    assert not _imported_after(modules) & forbidden


def test_the_model_never_imports_the_platform() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "varedit").rglob("*.py"))
    assert not re.search(r"^\s*(from|import) (jobs|api|worker|serve|varedit_client)\b", sources, re.M)


def _http_statuses_named(path: Path) -> list[str]:
    """Integer literals between 100 and 599 that a module compares with or stores as a status."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            named_status = any("status" in ast.unparse(t).lower() for t in targets)
            operands = [node.value] if named_status and node.value is not None else []
        else:
            continue
        for operand in operands:
            for const in ast.walk(operand):
                if isinstance(const, ast.Constant) and type(const.value) is int and 100 <= const.value < 600:
                    found.append(f"{path.name}:{const.lineno}: {const.value}")
    return found


def test_the_domain_names_no_http_status() -> None:
    from jobs import errors

    assert not [p for p in sorted((ROOT / "jobs").glob("*.py")) if _http_statuses_named(p)]
    domain_errors = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.JobsError)
    ]
    assert domain_errors and not [c.__name__ for c in domain_errors if hasattr(c, "status")]


def test_every_domain_error_has_a_status_in_the_apis_table() -> None:
    from api.errors import DOMAIN_STATUS
    from jobs import errors

    domain_errors = {
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.JobsError)
    }
    assert domain_errors - {errors.JobsError} == set(DOMAIN_STATUS)


# Section numbers of a specification, errata ids, and the names of the design notes the project was
# built from, which live outside this repository (character classes keep this line from matching).
OUTSIDE_DOCUMENTS = re.compile(
    r"\bspec(ification)? \d+\.\d|\berrat(a|um) E\d|\bE\d+/E\d+\b|\bDESIGN(\.md| section)|STYLE\.md|"
    r"varedit-model-sp[e]c|\.\./sh[a]red\b|golden R[E]ADME"
)


def test_no_comment_or_doc_cites_a_document_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    suffixes = {".py", ".md", ".sh", ".yml", ".yaml", ".toml", ".ini", ".js", ".html", ".css"}
    paths = [
        ROOT / p for p in tracked.stdout.split() if Path(p).suffix in suffixes or Path(p).name == "Dockerfile"
    ]
    cites = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in paths
        if p.exists()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_DOCUMENTS.search(line)
    ]
    assert cites == []
