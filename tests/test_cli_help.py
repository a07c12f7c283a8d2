"""`deepfake-moe COMMAND --help` says what each command does."""

import re

import pytest

from deepfake_moe.cli import main


@pytest.mark.parametrize("command", ["explain", "export-onnx", "merge-experts", "families", "evaluate", "synthetic-data", "balance"])
def test_every_command_has_a_description(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    description = re.split(r"\n(?:positional arguments|options):", text.split("\n\n", 1)[1])[0]
    assert len(description.split()) >= 15, text
    assert "%%" not in text
