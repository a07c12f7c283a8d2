"""Generator families: milliseconds per image on this machine, and high-frequency energy against the reals'.

For each family, the same LFW reals (native 150 px) go through the family, then through the final
output chain; reals go through the chain too. Printed per family:
  ms/img      mean wall time of one family call (after a warm-up), one thread
  hf          mean power of x - GaussianBlur(x, sigma 1) on grey levels in [0, 1], x 1e4
  hi-band     share of the (Hann-windowed) spectrum's power above half the Nyquist frequency, %
  ratio       the family's figure / the reals' figure (1.0 = as much fine detail as the reals),
              before and after the output chain
Families that make images from a seed (dcgan_face, stylegan_lite, 64 px) are compared with the
same reals shrunk to their size (`real_downscale`), the reals a corpus pairs them with.

  python benchmarks/generator_families.py --lfw ../shared/data/lfw150.tar --n 24
  python benchmarks/generator_families.py --ae-weights DIR --stylegan-weights DIR   # trained ones
  python benchmarks/generator_families.py --corpus OUT    # a built corpus: detail per source and per label

Without --ae-weights the autoencoders are trained here for --ae-steps steps (short: their figures
then show a briefly trained autoencoder); without --stylegan-weights stylegan_lite is timed
untrained (its speed is the architecture's) and its detail figures are not shown.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from deepfake_moe.runtime import describe_cpu


def hf_energy(rgb: np.ndarray) -> float:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return float(((grey - cv2.GaussianBlur(grey, (0, 0), 1.0)) ** 2).mean())


def high_band(rgb: np.ndarray) -> float:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
    h, w = grey.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    return float(power[radius > 0.25].sum() / max(power.sum(), 1e-12))  # 0.5 cycles/px = Nyquist


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def load_reals(tar_path: Path, n: int) -> list[np.ndarray]:
    with tarfile.open(tar_path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        step = max(1, len(members) // n)
        return [decode(tar.extractfile(m).read()) for m in members[::step][:n]]


def measure(name: str, images: list[np.ndarray], options: dict, seed: int = 0) -> tuple[list[np.ndarray], float]:
    from deepfake_moe.augment.registry import AugmentContext, get_family

    fn = get_family(name).fn
    fn(images[0].copy(), np.random.default_rng(seed), AugmentContext(options=dict(options)))  # warm-up: loads the nets
    outs, times = [], []
    for i, img in enumerate(images):
        t = time.perf_counter()
        outs.append(fn(img.copy(), np.random.default_rng(seed + i), AugmentContext(options=dict(options))).image)
        times.append(time.perf_counter() - t)
    return outs, 1000 * float(np.mean(times))  # the mean: what a corpus of them costs


def chained(images: list[np.ndarray], seed: int) -> list[np.ndarray]:
    from deepfake_moe.augment.chain import OutputChain, finish

    chain = OutputChain()
    return [decode(finish(img, np.random.default_rng([seed, i]), chain)[0]) for i, img in enumerate(images)]


def detail(images: list[np.ndarray]) -> tuple[float, float]:
    return float(np.mean([hf_energy(x) for x in images])), float(np.mean([high_band(x) for x in images]))


def row(name: str, ms: float | None, fakes: list[np.ndarray] | None, reals: list[np.ndarray]) -> str:
    ms_text = f"{ms:8.1f}" if ms is not None else "       -"
    if fakes is None:
        return f"{name:16s} {ms_text}   (detail not measured)"
    cells = []
    for f_imgs, r_imgs in ((fakes, reals), (chained(fakes, 1), chained(reals, 2))):
        (fh, fb), (rh, rb) = detail(f_imgs), detail(r_imgs)
        cells.append(f"{1e4 * fh:7.2f} {100 * fb:6.2f}%  {fh / rh:5.2f} {fb / rb:5.2f}")
    return f"{name:16s} {ms_text}   " + "   |   ".join(cells)


def ncnn_threads(reals: list[np.ndarray]) -> list[str]:
    """ms/img of Real-ESRGAN x4plus with 1 and 2 ncnn threads: the baseline of the esrgan family."""
    from deepfake_moe.augment import gan

    small = cv2.resize(reals[0][1:149, 1:149], (37, 37), interpolation=cv2.INTER_AREA)
    lines = []
    base = None
    for threads in (1, 2):
        gan.upscale(small, "realesrgan-x4plus", threads=threads)
        t = time.perf_counter()
        for _ in range(3):
            gan.upscale(small, "realesrgan-x4plus", threads=threads)
        ms = 1000 * (time.perf_counter() - t) / 3
        base = base or ms
        lines.append(f"  realesrgan-x4plus 37->148 px, ncnn threads {threads}: {ms:7.1f} ms  (x{base / ms:.2f} vs 1 thread)")
    return lines


def per_model(reals: list[np.ndarray]) -> list[str]:
    from deepfake_moe.augment import gan

    lines = []
    real_hf, real_band = detail(reals)
    for family, names in gan.FAMILY_MODELS.items():
        for name in names:
            fakes, ms = measure(family, reals, {"models": [name]})
            hf, band = detail(fakes)
            lines.append(f"  {family:8s} {name:26s} {ms:7.1f} ms/img   hf ratio {hf / real_hf:5.2f}   hi-band ratio {band / real_band:5.2f}")
    return lines


def generator_options(args, reals: list[np.ndarray], tmp: Path) -> dict[str, dict | None]:
    """Options per family; None = cannot run here (said why)."""
    from PIL import Image

    from deepfake_moe.augment import autoencoder, dcgan, gan

    opts: dict[str, dict | None] = {}
    for family in ("esrgan", "span_sr"):
        missing = gan.missing_models(family, {})
        opts[family] = None if missing else {}
        if missing:
            print(f"{family}: {missing}")
    try:
        opts["dcgan_face"] = {"weights": str(dcgan.weights_path())}
    except FileNotFoundError as e:
        opts["dcgan_face"] = None
        print(f"dcgan_face: {e}")
    if args.ae_weights:
        opts["autoencoder"] = {"weights": args.ae_weights}
    else:
        paths = []
        for i, img in enumerate(reals):
            Image.fromarray(img).save(tmp / f"{i}.png")
            paths.append(str(tmp / f"{i}.png"))
        t = time.perf_counter()
        folder = autoencoder.train_autoencoders(paths, autoencoder.AESettings(steps=args.ae_steps), root=tmp / "ae")
        print(f"autoencoders trained here: {args.ae_steps} steps each, {time.perf_counter() - t:.0f} s for four (--ae-weights for trained ones)")
        opts["autoencoder"] = {"weights": str(folder)}
    opts["stylegan_lite"] = {"weights": args.stylegan_weights} if args.stylegan_weights else None
    return opts


def untrained_stylegan_ms(tmp: Path) -> float:
    from deepfake_moe.augment import stylegan, trained

    s = stylegan.StyleGANSettings()
    folder = tmp / "sg"
    trained.save_weights(stylegan.Generator(s), folder / "generator.safetensors", {"settings": vars(s)})
    _, ms = measure("stylegan_lite", [np.zeros((64, 64, 3), np.uint8)] * 8, {"weights": str(folder)})
    return ms


def corpus_detail(folder: Path, per_source: int) -> None:
    """Fine detail of a built corpus's files as a detector sees them: per source, and per label
    (quartiles), with the ratio fake/real of the means. Whether detail tells the label, in one table."""
    import pandas as pd

    from deepfake_moe.data.image_io import read_image

    m = pd.read_parquet(folder / "manifest.parquet")
    rows = []
    for source, group in m.groupby("source"):
        picked = group.sample(min(per_source, len(group)), random_state=0)
        for path, label in zip(picked["path"], picked["label"]):
            img = read_image(str(folder / path))
            rows.append({"source": source, "label": int(label), "hf": 1e4 * hf_energy(img), "band": 100 * high_band(img)})
    df = pd.DataFrame(rows)
    print(f"corpus {folder}: {per_source} files per source (or all), hf x1e4, hi-band %")
    print(df.groupby(["label", "source"])[["hf", "band"]].mean().round(2).to_string())
    by_label = df.groupby("label")[["hf", "band"]].describe(percentiles=[0.25, 0.5, 0.75]).round(2)
    print(by_label.to_string())
    means = df.groupby("label")[["hf", "band"]].mean()
    if {0, 1} <= set(means.index):
        print(f"fake/real ratio of means: hf {means.loc[1, 'hf'] / means.loc[0, 'hf']:.2f}, hi-band {means.loc[1, 'band'] / means.loc[0, 'band']:.2f}")


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw150.tar"))
    p.add_argument("--n", type=int, default=24, help="reals (LFW, native 150 px) per family")
    p.add_argument("--ae-weights", help="folder of trained autoencoders (corpus cache)")
    p.add_argument("--ae-steps", type=int, default=150, help="steps to train autoencoders here when --ae-weights is not given")
    p.add_argument("--stylegan-weights", help="folder of a trained StyleGAN-lite (corpus cache)")
    p.add_argument("--corpus", type=Path, help="measure the files of a built corpus instead")
    p.add_argument("--per-source", type=int, default=200, help="files per source with --corpus")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(describe_cpu())
    if args.corpus:
        corpus_detail(args.corpus, args.per_source)
        return
    reals = load_reals(Path(args.lfw), args.n)
    small_reals, _ = measure("real_downscale", reals, {"sizes": [64]})
    with tempfile.TemporaryDirectory() as tmp:
        opts = generator_options(args, reals, Path(tmp))
        print(f"\n{args.n} LFW reals at 150 px; one thread; hf x1e4, hi-band = power above half Nyquist")
        print(f"{'family':16s} {'ms/img':>8s}   {'before the chain: hf hi-band  ratio(hf, band)':44s}|   after the chain")
        print(row("real", None, reals, reals))
        print(row("real_downscale", None, small_reals, small_reals))
        for family in ("esrgan", "span_sr", "autoencoder", "dcgan_face", "stylegan_lite"):
            if opts.get(family) is None:
                if family == "stylegan_lite":
                    print(f"{family:16s} {untrained_stylegan_ms(Path(tmp)):8.1f}   (untrained generator: speed only; --stylegan-weights for detail)")
                continue
            fakes, ms = measure(family, reals, opts[family])
            print(row(family, ms, fakes, small_reals if family in ("dcgan_face", "stylegan_lite") else reals))
        if opts.get("esrgan") is not None:
            print("\nSR nets one by one (before the chain):")
            print("\n".join(per_model(reals)))
            print("ncnn threads (baseline: 1 thread, measured in this run):")
            print("\n".join(ncnn_threads(reals)))


if __name__ == "__main__":
    main()
