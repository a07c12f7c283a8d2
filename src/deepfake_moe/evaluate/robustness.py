"""Robustness sweep: the same labelled images re-scored after common degradations.

Each perturbation is a pure function RGB uint8 -> RGB uint8, applied to the decoded image before
the model's own preprocessing, as a platform re-encoding or resizing an upload would.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from deepfake_moe.data.decode_pool import DecodeFailure, DecodePool
from deepfake_moe.data.image_io import ImageReader
from deepfake_moe.evaluate.metrics import MetricError, binary_metrics

Perturbation = Callable[[np.ndarray], np.ndarray]
PERTURBATIONS: dict[str, Perturbation] = {}
CHUNK = 128  # images decoded and held at once


def perturbation(name: str):
    def add(fn: Perturbation) -> Perturbation:
        if name in PERTURBATIONS:
            raise ValueError(f"perturbation {name!r} registered twice")
        PERTURBATIONS[name] = fn
        return fn

    return add


def _encode_decode(rgb: np.ndarray, ext: str, params: list[int]) -> np.ndarray:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def _jpeg(quality: int) -> Perturbation:
    return lambda rgb: _encode_decode(rgb, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def _downscale(factor: float) -> Perturbation:
    def apply(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)

    return apply


perturbation("none")(lambda rgb: rgb)
for _q in (90, 70, 50):
    perturbation(f"jpeg_q{_q}")(_jpeg(_q))
for _f in (0.5, 0.25):
    perturbation(f"downscale_{_f:g}")(_downscale(_f))


@perturbation("blur_sigma1.5")
def gaussian_blur(rgb: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=1.5)


@perturbation("noise_sigma8")
def gaussian_noise(rgb: np.ndarray) -> np.ndarray:
    # Seeded from the pixels themselves: the same image always gets the same noise.
    rng = np.random.default_rng(int(rgb[::7, ::7].sum()) + rgb.size)
    noisy = rgb.astype(np.float32) + rng.normal(0.0, 8.0, rgb.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


perturbation("webp_q80")(lambda rgb: _encode_decode(rgb, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]))


def sweep_scores(
    predictor, paths: Sequence[str], names: Sequence[str] | None = None, progress: bool = True
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scores per perturbation for `paths` (nan where the image failed) and an error per path."""
    names = list(names or PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {unknown}; known: {list(PERTURBATIONS)}")
    scores = {n: np.full(len(paths), np.nan) for n in names}
    errors = [""] * len(paths)
    backend = predictor.config.image_backend
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", file=sys.stderr, desc="robustness")
    reader = ImageReader(backend, predictor.limits)
    decoded = DecodePool(reader, predictor.num_workers, predictor.decode_budget).map(paths)
    for start in range(0, len(paths), CHUNK):
        images, idx = [], []
        for i in range(start, min(start + CHUNK, len(paths))):
            image = next(decoded)
            if isinstance(image, DecodeFailure):
                errors[i] = image.reason
            else:
                images.append(image)
                idx.append(i)
        for n in names:
            if images:
                scores[n][idx] = predictor.predict_arrays([PERTURBATIONS[n](im) for im in images])
        if bar is not None:
            bar.update(min(CHUNK, len(paths) - start))
    if bar is not None:
        bar.close()
    return scores, errors


def robustness_table(labels: np.ndarray, scores: dict[str, np.ndarray], threshold: float,
                     n_bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """One row per perturbation: AUC (with 95% interval), AP, accuracy, TPR at FPR 1%, and change in AUC."""
    rows = []
    for name, s in scores.items():
        ok = np.isfinite(s)
        row = {"perturbation": name, "n": int(ok.sum())}
        try:
            m = binary_metrics(labels[ok], s[ok], threshold, (0.01,), n_bootstrap, seed)
        except MetricError as e:
            row["note"] = str(e)
        else:
            lo, hi = m.auc.ci95 if m.auc.ci95 else (np.nan, np.nan)
            row.update(auc=m.auc.value, auc_low=lo, auc_high=hi, ap=m.ap.value, accuracy=m.accuracy.value,
                       tpr_at_fpr_1pct=m.tpr_at_fpr[0.01].value, note="")
        rows.append(row)
    table = pd.DataFrame(rows)
    if "auc" in table and "none" in scores:
        table["auc_change"] = table["auc"] - table.loc[table["perturbation"] == "none", "auc"].iloc[0]
    return table


def robustness_markdown(table: pd.DataFrame) -> str:
    lines = ["| perturbation | n | AUC [95% CI] | change | AP | accuracy | TPR@FPR=1% |", "|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        if pd.isna(r.get("auc", np.nan)):
            lines.append(f"| {r['perturbation']} | {r['n']} | not computed: {r.get('note', '')} | | | | |")
            continue
        ci = f" [{r['auc_low']:.3f}, {r['auc_high']:.3f}]" if np.isfinite(r["auc_low"]) else ""
        change = f"{r['auc_change']:+.4f}" if "auc_change" in r and np.isfinite(r["auc_change"]) else ""
        lines.append(f"| {r['perturbation']} | {r['n']} | {r['auc']:.4f}{ci} | {change} | {r['ap']:.4f} | "
                     f"{r['accuracy'] * 100:.1f}% | {r['tpr_at_fpr_1pct'] * 100:.1f}% |")
    return "\n".join(lines) + "\n"
