"""Where the corpus's real photos come from: LFW, photos that Python and Debian packages ship, their licences.

Python packages (scikit-image, scikit-learn, matplotlib) are found where they are installed; Debian
packages either installed with apt or, with `--fetch`, downloaded with `apt-get download` and unpacked
with `dpkg -x` into a cache (no root needed). The LFW archive's path comes from the caller or from
$DEEPFAKE_MOE_LFW only.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepfake_moe.errors import ConfigError
from deepfake_moe.paths import cache_dir

LFW_ENV = "DEEPFAKE_MOE_LFW"
LFW_TAR = "lfw150.tar"
LFW_LICENCE = (
    "Labeled Faces in the Wild (University of Massachusetts, Amherst): no formal licence; distributed for "
    "research use, the photographers keep their copyright. Do not redistribute outside research use."
)


@dataclass(frozen=True)
class PhotoSource:
    dataset: str  # id used in the manifest's `dataset` column and the folder name
    origin: str  # package the photos ship in
    licence: str  # summary; Debian sources add per-file licences from their copyright file
    files: Callable[[list[Path]], list[Path]]  # photo files, given the roots to look under
    debian: str | None = None  # Debian package `--fetch` downloads and unpacks into the cache


def _package_dir(module: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _named(folder: Path | None, names: tuple[str, ...]) -> list[Path]:
    if folder is None:
        return []
    return [folder / n for n in names if (folder / n).is_file()]


def _under_roots(roots: list[Path], rel: str, pattern: str, names: tuple[str, ...] = ()) -> list[Path]:
    """Files matching `pattern` (or listed in `names`) in the first root holding folder `rel`."""
    for root in roots:
        folder = root / rel
        if folder.is_dir():
            found = _named(folder, names) if names else sorted(p for p in folder.iterdir() if fnmatch.fnmatch(p.name, pattern))
            if found:
                return found
    return []


SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
    "camera.png", "coins.png", "moon.png", "retina.jpg", "ihc.png",
)  # fmt: skip
# opencv-doc's examples/data: the camera photographs only (no renders, paintings, charts, chessboards;
# ela_modified.jpg is a spliced fake, left out).
OPENCV_PHOTOS = (
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "box_in_scene.png",
    "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png",
    "HappyFish.jpg", "home.jpg", "leuvenA.jpg", "leuvenB.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png",
    "smarties.png", "squirrel_cls.jpg", "stuff.jpg",
)  # fmt: skip

PHOTO_SOURCES = (
    PhotoSource(
        "skimage", "PyPI scikit-image (skimage/data)",
        "public domain / CC0 / BSD-3-Clause, per file in skimage/data/README.txt",
        lambda roots: _named(_package_dir("skimage") and _package_dir("skimage") / "data", SKIMAGE_PHOTOS),
    ),
    PhotoSource(
        "sklearn", "PyPI scikit-learn (sklearn/datasets/images)",
        "china.jpg, flower.jpg: Creative Commons, per sklearn/datasets/images/README.txt",
        lambda roots: _named(_package_dir("sklearn") and _package_dir("sklearn") / "datasets" / "images", ("china.jpg", "flower.jpg")),
    ),
    PhotoSource(
        "matplotlib", "PyPI matplotlib (mpl-data/sample_data)",
        "grace_hopper.jpg: US Navy photograph, public domain",
        lambda roots: _named(_package_dir("matplotlib") and _package_dir("matplotlib") / "mpl-data" / "sample_data", ("grace_hopper.jpg",)),
    ),
    PhotoSource(
        "lomiri-wallpapers", "Debian lomiri-wallpapers-16.04 (/usr/share/backgrounds)",
        "CC-BY-4.0 / CC-BY-SA-4.0 per photo (authors in the file names)",
        lambda roots: _under_roots(roots, "usr/share/backgrounds", "*_by_*.jpg"),
        debian="lomiri-wallpapers-16.04",
    ),
    PhotoSource(
        "mate-backgrounds", "Debian mate-backgrounds (/usr/share/backgrounds/mate/nature)",
        "GPL-2+ per the package's copyright file",
        lambda roots: _under_roots(roots, "usr/share/backgrounds/mate/nature", "*.jpg"),
        debian="mate-backgrounds",
    ),
    PhotoSource(
        "opencv-doc", "Debian opencv-doc (/usr/share/doc/opencv-doc/examples/data)",
        "mostly the OpenCV sample data licence (Apache-2.0 / BSD-3-Clause); see the package's copyright file",
        lambda roots: _under_roots(roots, "usr/share/doc/opencv-doc/examples/data", "", OPENCV_PHOTOS),
        debian="opencv-doc",
    ),
)  # fmt: skip


def debian_roots() -> list[Path]:
    """The system itself (packages installed with apt) and the cache `--fetch` unpacks into."""
    return [Path("/"), cache_dir("debian") / "root"]


def fetch_debian(packages: list[str], log: Callable[[str], None] = print) -> None:
    """`apt-get download` + `dpkg -x` each package into the cache (no install, no root needed)."""
    debs, root = cache_dir("debian") / "debs", cache_dir("debian") / "root"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        done = root / ".unpacked" / pkg
        if done.exists():
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            log(f"corpus: downloading Debian package {pkg}")
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if r.returncode != 0 or not found:
                log(f"corpus: could not download {pkg} (skipped): {r.stderr.strip()[-300:]}")
                continue
        subprocess.run(["dpkg", "-x", str(found[-1]), str(root)], check=True)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(found[-1].name + "\n")


def debian_licences(root_list: list[Path], package: str) -> list[tuple[str, str]]:
    """(Files pattern, License) pairs of a Debian machine-readable copyright file."""
    for root in root_list:
        path = root / "usr/share/doc" / package / "copyright"
        if path.is_file():
            pairs, files = [], None
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("Files:"):
                    files = line.split(":", 1)[1].strip()
                elif line.startswith("License:") and files is not None:
                    pairs.append((files, line.split(":", 1)[1].strip()))
                    files = None
            return pairs
    return []


def file_licence(pairs: list[tuple[str, str]], path: Path) -> str:
    for patterns, licence in pairs:
        for pattern in patterns.split():
            if pattern != "*" and (fnmatch.fnmatch(path.name, os.path.basename(pattern))):
                return licence
    return ""


def find_lfw(explicit: str | None = None) -> Path | None:
    """The LFW archive: the path given, else $DEEPFAKE_MOE_LFW; None when neither is set."""
    given = explicit or os.environ.get(LFW_ENV)
    if not given:
        return None
    if not Path(given).is_file():
        where = "given" if explicit else f"in ${LFW_ENV}"
        raise FileNotFoundError(f"LFW archive not found: {given} ({where})")
    return Path(given).resolve()


def require_lfw(explicit: str | None = None) -> Path:
    """`find_lfw`, but a clear error naming both ways to give the archive when neither is set."""
    path = find_lfw(explicit)
    if path is None:
        raise ConfigError(
            f"the corpus wants LFW faces ({LFW_TAR}) but no archive was given: give its path (corpus --lfw PATH) "
            f"or set the environment variable {LFW_ENV}; or build from package photos only (corpus --no-lfw)"
        )
    return path
