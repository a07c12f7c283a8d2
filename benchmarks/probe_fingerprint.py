"""Probe: do synthetic upsampling fingerprints on reals teach a detector generators it never saw?

Every generator family held out so far was missed (leave-one-generator-out: DCGAN faces 0.33-0.41,
StyleGAN-lite 0.03-0.20): the other families teach "more fine detail = fake" or "a smooth 64 px face
= real", not the trace of a decoder. This probe makes fakes from no generator at all, in the spirit
of FingerprintNet (Jeong et al., ECCV 2022) and of aligned real/fake pairs (Rajan et al., ICLR 2025):

  base = up(down(x))              the real at 1/s of its resolution, bilinear back up (s = 2 or 4)
  d    = decoder(down(x))         a randomly initialised decoder: 1-2 upsampling stages, each transposed
                                  conv, nearest + conv, bilinear + conv or pixel shuffle; random width,
                                  activation and output kernel
  fake = base + (d - up(down(d))) with its power in each ring of the 2-D spectrum set to that of
                                  x - base, in brightness and colour apart; then the whole image's rings
                                  set to the real's (`match_spectrum`)

So a fake keeps its real's low frequencies and its power at every spatial frequency; only the
structure of the detail differs: natural, or made by an upsampler. Every pool real gets such a fake
and a second copy of itself (`real_rechain`); both leave through the corpus's output chain again, so
no step is on one label alone. Then the training config's expert 0 is trained on split 0 three ways
and scored on the test manifest, where *no* generator family took part in training:

  A  edits only                 the baseline: never saw a generator
  B  edits + fingerprints       does the synthetic trace add generator detection to A?
  N  NPR expert, fingerprints   the upsampling-artefact expert (native 64 px crops) on them alone

It prints, per family, the AUC against all test reals and the TPR at the test reals' 1% FPR.

What it decided (runs/default/split, 450 steps for A and B, 500 for N; test = the 4,101 held-out images,
1,076 reals; 2026-11-28). AUC, every generator family unseen:

| arm | esrgan | span_sr | autoencoder | dcgan_face | stylegan_lite | face swap | splice | inpaint |
|---|---|---|---|---|---|---|---|---|
| A edits only | 0.653 | 0.598 | 0.519 | 0.507 | 0.113 | 0.674 | 0.755 | 0.709 |
| B + fingerprints, x2 and x4 | 0.668 | 0.557 | 0.615 | 0.509 | 0.901 | 0.566 | 0.671 | 0.643 |
| B + fingerprints, x2 only | 0.640 | 0.547 | 0.621 | 0.544 | 0.844 | 0.586 | 0.686 | 0.661 |
| N NPR, x2 and x4 | 0.509 | 0.511 | 0.692 | 0.473 | 0.955 | 0.380 | 0.549 | 0.563 |
| N NPR, x2 only | 0.533 | 0.515 | 0.713 | 0.464 | 0.816 | 0.441 | 0.547 | 0.559 |

The unseen StyleGAN-lite faces are caught (0.11 -> 0.84-0.96), and the autoencoders a little (0.52 ->
0.62-0.71), but not the DCGAN faces or the super-resolution families, and every arm pays on the face
swaps (0.674 -> 0.38-0.59) and on every edit family. What was learnt is smoothness, not a decoder's
trace: StyleGAN-lite is the smoothest source in the test (median mean square of x - GaussianBlur(x, 1 px)
in grey levels: 1.4, against 14.5 for the plain test reals), and the arms' scores on the test reals fall
with their fine detail (Spearman -0.32 to -0.33 for B, -0.64 for N, against -0.10 for A). The first
version of this script matched only the detail band's total energy, before the output chain: its fakes left the chain
with half the reals' fine detail (downscaling averages the decoders' noise-like detail away, where a
photograph's detail at coarser scales takes its place), and it learnt the same cue more strongly (B:
StyleGAN-lite 0.995, face swap 0.475, Spearman -0.48). So synthetic fingerprints did not go into the
corpus: they teach "smooth = fake", which the next smooth real photograph would pay for.

  python benchmarks/probe_fingerprint.py --steps 450 --work /work/runs/probe_fp_x4
  python benchmarks/probe_fingerprint.py --steps 450 --work /work/runs/probe_fp_x2 --max-stages 1
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from deepfake_moe.augment.chain import OutputChain, finish
from deepfake_moe.config import from_dict
from deepfake_moe.evaluate.metrics import roc_points, tpr_at_fpr
from deepfake_moe.train.config import ExpertConfig
from deepfake_moe.train.loop import train
from probe_generator_share import EDITS, probe_parser, probe_setup, score

GENERATED = ["esrgan", "span_sr", "autoencoder", "dcgan_face", "stylegan_lite"]
UPSAMPLERS = ("transposed", "nearest", "bilinear", "shuffle")
NPR_EXPERT = {"backbone": "npr_resnet50_l2", "split": 0, "preprocess": {"input_size": 64, "mode": "native"},
              "optim": {"lr": 0.002}, "loss": {"noise_std": 0.01}}


def random_decoder(rng: np.random.Generator, stages: int) -> tuple[nn.Sequential, dict]:
    """An untrained decoder from the low-resolution image to full resolution, drawn like a generator's."""
    torch.manual_seed(int(rng.integers(2**31)))
    width = int(rng.choice([8, 16, 32]))
    act_name = str(rng.choice(["relu", "leaky_relu", "elu"]))
    act = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}[act_name]
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), act()]
    kinds = [UPSAMPLERS[int(rng.integers(len(UPSAMPLERS)))] for _ in range(stages)]
    for kind in kinds:
        if kind == "transposed":
            layers.append(nn.ConvTranspose2d(width, width, 4, 2, 1))
        elif kind == "shuffle":
            layers += [nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2)]
        else:
            layers += [nn.Upsample(scale_factor=2, mode=kind), nn.Conv2d(width, width, 3, padding=1)]
        layers.append(act())
    k = int(rng.choice([1, 3]))
    layers.append(nn.Conv2d(width, 3, k, padding=k // 2))
    return nn.Sequential(*layers).eval(), {"upsamplers": kinds, "width": width, "activation": act_name, "out_kernel": k}


def radial_bins(h: int, w: int, n: int = 24) -> torch.Tensor:
    """(h, w) index of each 2-D frequency's ring: n rings of equal width up to the corner's radius."""
    fy, fx = torch.fft.fftfreq(h)[:, None], torch.fft.fftfreq(w)[None, :]
    radius = (fy**2 + fx**2).sqrt() / (0.5 * 2**0.5)
    return (radius * n).long().clamp_max(n - 1)


def match_spectrum(f: torch.Tensor, r: torch.Tensor, rings: torch.Tensor) -> torch.Tensor:
    """f with the power of each frequency ring set to r's: its structure within rings (angles, peaks,
    phases) kept, its amount of detail at every scale made the real's."""
    n = int(rings.max()) + 1
    F_, R_ = torch.fft.fft2(f), torch.fft.fft2(r)
    idx = rings.flatten()
    power = lambda z: torch.zeros(z.shape[:-2] + (n,)).index_add_(-1, idx, z.abs().square().flatten(-2))  # noqa: E731
    gain = (power(R_) / power(F_).clamp_min(1e-12)).sqrt()
    gain = torch.where(power(F_) > 1e-12, gain, torch.zeros_like(gain))
    return torch.fft.ifft2(F_ * gain[..., rings]).real


def fingerprint(rgb: np.ndarray, rng: np.random.Generator, max_stages: int = 2) -> tuple[np.ndarray, dict]:
    """The real's detail above 1/s of its resolution replaced by a random decoder's, with the real's power
    spectrum (module docstring)."""
    stages = int(rng.integers(1, max_stages + 1))
    s = 2**stages
    h, w = (rgb.shape[0] // s) * s, (rgb.shape[1] // s) * s
    x = torch.from_numpy(np.array(rgb[:h, :w])).permute(2, 0, 1)[None].float() / 255.0

    def up_down(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(F.avg_pool2d(t, s), size=(h, w), mode="bilinear", align_corners=False)

    decoder, params = random_decoder(rng, stages)
    with torch.no_grad():
        d = decoder(F.avg_pool2d(x, s) * 2 - 1)
    base, rings = up_down(x), radial_bins(h, w)
    r, f = x - base, d - up_down(d)
    parts = (lambda t: t.mean(1, keepdim=True).expand_as(t), lambda t: t - t.mean(1, keepdim=True))
    fake = base + sum(match_spectrum(part(f), part(r), rings) for part in parts)  # brightness and colour apart
    # again on the whole image: where base and detail overlap, the real's detail adds to its base in phase
    fake = sum(match_spectrum(part(fake), part(x), rings) for part in parts)
    out = (fake[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return out, {"factor": s, **params}


def make_rows(pool: pd.DataFrame, out: Path, seed: int, max_stages: int) -> pd.DataFrame:
    """A fingerprint fake and a re-chained copy of every pool real, written once (cached in `out`)."""
    table = out / "rows.parquet"
    if table.exists():
        return pd.read_parquet(table)
    chain, rows = OutputChain(), []
    for i, real in enumerate(pool.itertuples(index=False)):
        rgb = np.asarray(Image.open(real.path).convert("RGB"))
        fake_rng = np.random.default_rng([seed, i, 1])  # the re-chained reals are the same in every variant
        for source, rng, image, params in (("fingerprint", fake_rng, *fingerprint(rgb, fake_rng, max_stages)),
                                           ("real_rechain", np.random.default_rng([seed, i, 0]), rgb, {})):
            data, ext, record = finish(image, rng, chain)
            path = out / source / f"{i:05d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            Image.open(io.BytesIO(data)).verify()
            rows.append({**real._asdict(), "path": str(path), "label": int(source == "fingerprint"), "source": source,
                         "params": json.dumps({**params, "chain": record})})
    made = pd.DataFrame(rows)
    made.to_parquet(table)
    return made


def report(name: str, test: pd.DataFrame, prob: pd.Series, families: list[str]) -> None:
    reals = test["label"] == 0
    cells = []
    for f in families:
        rows = reals | (test["family"] == f)
        y, p = test.loc[rows, "label"].to_numpy(), prob[rows].to_numpy()
        fpr, tpr, _ = roc_points(y, p)
        cells.append(f"{roc_auc_score(y, p):.3f}/{tpr_at_fpr(fpr, tpr, 0.01):.2f}")
    print(f"{name:<28}" + "".join(f"{c:>15}" for c in cells), flush=True)


def main() -> None:
    p = probe_parser(__doc__)
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--npr-steps", type=int, default=500)
    p.add_argument("--work", default="runs/probe_fingerprint")
    p.add_argument("--arms", default="A,B,N")
    p.add_argument("--max-stages", type=int, default=2, help="upsampling stages of the decoders: 1 (x2) or 2 (x2, x4)")
    args = p.parse_args()

    base, test = probe_setup(args)
    work = Path(args.work)
    manifest = pd.read_parquet(args.manifest)
    made = make_rows(manifest[manifest["label"] == 0], work / "images", seed=0, max_stages=args.max_stages)
    manifest_path = work / "manifest.parquet"
    pd.concat([manifest, made], ignore_index=True).to_parquet(manifest_path)
    base.data.manifest = str(manifest_path)
    base.optim.max_steps = args.steps
    base.eval.every_steps, base.eval.at_epoch_end = 0, False

    families = GENERATED + [f for f in sorted(test["family"].unique()) if f in EDITS or f == "faceswap"]
    print(f"test {args.test}: AUC/TPR@1%FPR of each family against all {int((test['label'] == 0).sum())} test reals")
    print(f"{'arm':<28}" + "".join(f"{f:>15}" for f in families))
    arms = {
        "A edits only": (base.experts[0], EDITS),
        "B edits + fingerprints": (base.experts[0], EDITS + ["fingerprint"]),
        "N NPR, fingerprints only": (from_dict(ExpertConfig, NPR_EXPERT), ["fingerprint"]),
    }
    for name, (expert, sources) in arms.items():
        if name[0] not in args.arms.split(","):
            continue
        cached = work / f"scores_{name[0]}.csv"
        if not cached.exists():
            cfg = copy.deepcopy(base)
            cfg.experts = [copy.deepcopy(expert)]
            cfg.experts[0].fake_sources = sources
            if name[0] == "N":
                cfg.experts[0].optim = {**cfg.experts[0].optim, "max_steps": args.npr_steps}
            run = work / f"run_{name[0]}"
            train(cfg, run, resume=(run / "experts").exists())
            score(run / "model", test, work).to_frame("probability").to_csv(cached, index=False)
        report(name, test, pd.read_csv(cached)["probability"], families)


if __name__ == "__main__":
    main()
