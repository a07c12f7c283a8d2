"""Project rules checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "deepfake_moe"
MAX_FUNCTION_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    """`path:line name (N lines)` of every function or method in `root` longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_over_80_lines():
    offenders = long_functions(SRC, MAX_FUNCTION_LINES)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(offenders)


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path / "pkg", MAX_FUNCTION_LINES) == [f"pkg/m.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]


def imported_modules(path: Path) -> set[str]:
    """Every deepfake_moe module `path` imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("deepfake_moe")}


def test_library_code_never_imports_command_modules():
    """What two stages share lives in the library (e.g. infer/plan.py's planned_model, used by predict,
    evaluate, calibrate and serve), not in one stage's commands.py: commands modules are the CLI's."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        mods = imported_modules(path)
        if path.name not in ("commands.py", "cli.py"):
            offenders += [f"{path.relative_to(SRC)} imports {m}" for m in mods if m.endswith(".commands")]
        elif path.name == "commands.py":
            offenders += [f"{path.relative_to(SRC)} imports {m}" for m in mods if m == "deepfake_moe.infer.commands"]
    assert not offenders, "\n".join(offenders)
