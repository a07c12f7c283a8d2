"""Errors and exit codes live in `deepfake_moe.errors`; the library never depends on the CLI."""

import ast
from pathlib import Path

import pytest

from deepfake_moe import errors
from deepfake_moe.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "deepfake_moe"


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parts = path.relative_to(root).with_suffix("").parts[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_no_library_module_imports_the_cli():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "cli.py" and "deepfake_moe.cli" in imported_modules(p)
    ]
    assert offenders == []


def test_the_import_check_sees_imports_of_every_form(tmp_path):
    # guards the check above against a form it would miss
    assert "deepfake_moe.cli" in imported_modules_of(tmp_path, "from deepfake_moe.cli import main\n")
    assert "deepfake_moe.cli" in imported_modules_of(tmp_path, "import deepfake_moe.cli as c\n")
    assert "deepfake_moe.cli" in imported_modules_of(tmp_path, "from deepfake_moe import cli\n")
    assert "deepfake_moe.cli" in imported_modules_of(tmp_path, "from ..cli import main\n")


def imported_modules_of(tmp_path: Path, source: str) -> set[str]:
    path = tmp_path / "deepfake_moe" / "stage" / "probe.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return imported_modules(path, root=tmp_path)


def test_config_error_is_one_class_wherever_it_is_imported():
    from deepfake_moe.config import ConfigError

    assert ConfigError is errors.ConfigError
    assert issubclass(errors.ConfigError, ValueError)  # callers that catch ValueError keep working


def test_specific_errors_are_user_errors():
    from deepfake_moe.data.image_io import ImageReadError
    from deepfake_moe.data.manifest import ManifestError
    from deepfake_moe.model.checkpoint import CheckpointError
    from deepfake_moe.model.pretrained import PretrainedError
    from deepfake_moe.train.loop import RunExistsError

    for cls in (ManifestError, CheckpointError, ImageReadError):
        assert issubclass(cls, errors.InputError)
    for cls in (PretrainedError, RunExistsError):
        assert issubclass(cls, errors.ConfigError)
    assert issubclass(ManifestError, ValueError)


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["predict", "--batch-size", "0", "x.jpg"], errors.EXIT_USAGE, "--batch-size must be >= 1"),
        (["predict", "--weights", "no/such/folder", "x.jpg"], errors.EXIT_USAGE, "weights no/such/folder: no such file or folder"),
        (["manifest", "in/", "-o", "out.txt"], errors.EXIT_USAGE, "output must end in"),
    ],
)
def test_cli_turns_user_errors_into_one_line_and_exit_code_2(argv, code, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"deepfake-moe {argv[0]}: error:")


def test_exit_codes():
    assert (errors.EXIT_OK, errors.EXIT_PARTIAL, errors.EXIT_USAGE, errors.EXIT_INTERRUPTED) == (0, 1, 2, 130)
