"""`deepfake-moe corpus OUT`: an offline, labelled corpus of real photos and the fakes made from them.

Steps, each cached so that a second run with the same settings does nothing:
1. gather reals (`sources`, `crops`, `reals`): LFW face crops (lfw150.tar, given by --lfw or
   $DEEPFAKE_MOE_LFW, at their native 150 px or shrunk to a smaller crop size, never enlarged) and
   the photos that registry packages ship (scikit-image, scikit-learn, matplotlib; Debian wallpapers
   and opencv-doc when installed, or fetched into a cache with --fetch), cut into crops; written
   through the output chain as OUT/reals/<dataset>/*.jpg|png with OUT/reals/manifest.parquet;
2. the generators the corpus trains on its reals (`generators`: autoencoders, StyleGAN-lite; cached);
3. one `prepare` run per family (`families`, `build`): OUT/prepared/<family>/, resumable, variants
   per family and an optional cap on the reals a slow family gets, every image through the same
   output chain (augment/chain.py) as the reals;
4. OUT/manifest.parquet (paths relative to OUT) and, from `reports`, counts.csv, LICENSES.md,
   contact_sheet.png.
"""

from deepfake_moe.augment.corpus.build import build_corpus

__all__ = ["build_corpus"]
