"""The README, docs and docstrings match the code: commands they name exist, files they cite exist."""

import argparse
import ast
import re
from pathlib import Path

import pytest

from deepfake_moe.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "deepfake_moe"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

COMMAND = re.compile(r"(?<![\w/.-])deepfake-moe\s+([a-z][a-z0-9-]*)")
# repo paths (`docs/method.md`, `configs/tiny.yaml`), package paths (`train/loop.py`), bare names (`METHOD.md`)
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:docs|configs|benchmarks|examples|tests|src)/[\w./-]*\w)")
PACKAGE_PATH = re.compile(r"(?<![\w/.$-])((?:deepfake_moe|data|augment|split|model|train|evaluate|infer)/[\w/]*\.py)\b")
BARE_DOC = re.compile(r"(?<![\w/.$-])([A-Z][\w-]*\.md)\b")


def commands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def strings(path: Path) -> str:
    """Docstrings and other string constants (--help texts, messages) of a Python file."""
    tree = ast.parse(path.read_text())
    return "\n".join(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def cited_texts() -> list[tuple[str, str]]:
    """(where, text) of everything written for readers: docs, configs, docstrings and help strings."""
    texts = [(str(p.relative_to(REPO)), p.read_text()) for p in [*DOCS, *CONFIGS, REPO / "Makefile"]]
    return texts + [(str(p.relative_to(REPO)), strings(p)) for p in SOURCES]


def written_names() -> set[str]:
    """File names the package writes (string constants in code, docstrings excluded): outputs, not citations."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        doc_nodes = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
        }
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in doc_nodes:
                names.update(BARE_DOC.findall(n.value))
    return names


def test_every_command_the_docs_name_exists():
    known = commands()
    named = {}
    for path in DOCS:
        for name in COMMAND.findall(path.read_text()):
            named.setdefault(name, path.name)
    assert {"predict", "train"} <= set(named)  # the scan finds what it should
    assert {n: where for n, where in named.items() if n not in known} == {}


def test_readme_stage_table_lists_real_commands():
    rows = [line.split("|") for line in (REPO / "README.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0]]
    col = header.index("command")
    listed = {name for row in rows[2:] for name in re.findall(r"`([a-z][a-z0-9-]*)`", row[col])}
    assert len(listed) >= 10
    assert listed - commands() == set()


def test_every_command_has_a_help_line_in_the_readme_table_or_text():
    # the other direction: a command nobody can discover from the README is a documentation gap
    readme = (REPO / "README.md").read_text()
    assert {c for c in commands() if f"`{c}`" not in readme and f"deepfake-moe {c}" not in readme} == set()


@pytest.mark.parametrize("kind", ["repo", "package", "bare"])
def test_every_file_a_doc_or_docstring_cites_exists(kind):
    missing = []
    outputs = written_names()
    for where, text in cited_texts():
        if kind == "repo":
            missing += [(where, p) for p in REPO_PATH.findall(text) if not (REPO / p.rstrip(".")).exists()]
        elif kind == "package":
            missing += [(where, p) for p in PACKAGE_PATH.findall(text)
                        if not ((PACKAGE.parent / p).exists() or (PACKAGE / p).exists())]
        else:
            repo_names = {p.name for p in REPO.rglob("*.md") if ".git" not in p.parts}
            missing += [(where, n) for n in BARE_DOC.findall(text) if n not in repo_names | outputs]
    assert missing == []


def test_docstring_scan_sees_the_citations():
    # guards the regexes above: a known citation is found where it is
    assert "docs/method.md" in REPO_PATH.findall(strings(PACKAGE / "train" / "losses.py"))
    assert BARE_DOC.findall("see METHOD.md and docs/method.md") == ["METHOD.md"]
    assert PACKAGE_PATH.findall("shared by `infer/predictor.py` and x/train/loop.py") == ["infer/predictor.py"]
