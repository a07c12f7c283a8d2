"""Label-free k-means over image features, keeping each `origin` group in one cluster.

A real image and everything derived from it (its edits, its Stable Diffusion variants) share an
`origin`; if they landed in different clusters, a split would train on an image and validate on
its near copy. So the unit of clustering is the group: either its mean feature (weighted by the
group's size) is clustered, or every row is clustered and the group follows its majority.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

GROUP_MODES = ("mean", "majority")
BACKENDS = ("auto", "sklearn", "faiss")
UNASSIGNED = -1  # rows without features (unreadable images)


@dataclass
class ClusterConfig:
    k: int = 5
    seed: int = 0
    l2_normalize: bool = True  # before PCA: k-means on directions (cosine), not magnitudes
    pca: int = 0  # components to keep first; 0 = no PCA
    whiten: bool = False  # scale PCA components to unit variance (needs pca > 0)
    group_by: str = "mean"  # how an origin group is placed: "mean" feature or "majority" of its rows
    per_label: bool = False  # cluster real-anchored and fake-only groups apart, then pair clusters
    stratify: str = ""  # manifest column (e.g. dataset): k clusters within each of its values, paired across them
    merge_degenerate: bool = False  # merge clusters lacking reals or fakes into their nearest neighbour
    backend: str = "auto"  # auto (faiss when installed) | sklearn | faiss
    batch_size: int = 4096  # MiniBatchKMeans batch
    n_init: int = 3
    max_iter: int = 100
    pca_fit_rows: int = 100_000  # PCA is fitted on a sample this big

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (one cluster gives no split), got {self.k}")
        if self.group_by not in GROUP_MODES:
            raise ValueError(f"group_by must be one of {GROUP_MODES}, got {self.group_by!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.pca < 0 or (self.whiten and not self.pca):
            raise ValueError("pca must be >= 0, and whiten needs pca > 0")


@dataclass
class Clustering:
    labels: np.ndarray  # (n_rows,) cluster per row, UNASSIGNED for rows without features
    centers: np.ndarray  # (k, d) in the transformed feature space
    merged: list[tuple[int, int]]  # (cluster merged away, cluster it joined), in original numbering


# ---- feature preparation -------------------------------------------------------------------

def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def prepare(x: np.ndarray, cfg: ClusterConfig, chunk: int = 65536) -> np.ndarray:
    """float32 copy: optional L2 normalisation, then optional PCA (fitted on a sample), chunk by chunk."""
    pca = None
    if cfg.pca:
        from sklearn.decomposition import PCA

        rng = np.random.default_rng(cfg.seed)
        fit_rows = np.sort(rng.choice(len(x), min(len(x), cfg.pca_fit_rows), replace=False))
        sample = np.asarray(x[fit_rows], dtype=np.float32)
        if cfg.l2_normalize:
            sample = _l2(sample)
        n_comp = min(cfg.pca, *sample.shape)
        pca = PCA(n_comp, whiten=cfg.whiten, svd_solver="randomized", random_state=cfg.seed).fit(sample)
    out = np.empty((len(x), pca.n_components_ if pca else x.shape[1]), dtype=np.float32)
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk], dtype=np.float32)
        if cfg.l2_normalize:
            block = _l2(block)
        out[start:start + chunk] = pca.transform(block) if pca else block
    return out


def group_means(x: np.ndarray, group_ids: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean feature, row count) of each group, via one sparse product (fast at millions of rows)."""
    from scipy import sparse

    counts = np.bincount(group_ids, minlength=n_groups).astype(np.float32)
    indicator = sparse.csr_matrix(
        (np.ones(len(group_ids), np.float32), (group_ids, np.arange(len(group_ids)))), shape=(n_groups, len(x))
    )
    sums = np.asarray(indicator @ x, dtype=np.float32)
    return sums / np.maximum(counts, 1)[:, None], counts


# ---- k-means backends ---------------------------------------------------------------------

def _use_faiss(cfg: ClusterConfig) -> bool:
    if cfg.backend == "faiss":
        if importlib.util.find_spec("faiss") is None:
            raise ValueError("backend 'faiss' needs the faiss package: pip install faiss-cpu")
        return True
    return cfg.backend == "auto" and importlib.util.find_spec("faiss") is not None


def kmeans(x: np.ndarray, k: int, cfg: ClusterConfig, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centers) for float32 rows; deterministic for a given seed and backend."""
    if len(x) < k:
        raise ValueError(f"cannot make {k} clusters from {len(x)} groups of images; lower k")
    if _use_faiss(cfg):
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=max(20, cfg.max_iter // 5), nredo=cfg.n_init, seed=cfg.seed,
                          verbose=False, spherical=False)
        km.train(np.ascontiguousarray(x), weights=None if weights is None else weights.astype(np.float32))
        _, labels = km.index.search(np.ascontiguousarray(x), 1)
        return labels[:, 0].astype(np.int64), km.centroids.astype(np.float32)
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=k,
        random_state=cfg.seed,
        batch_size=min(cfg.batch_size, len(x)),
        n_init=cfg.n_init,
        max_iter=cfg.max_iter,
        init_size=min(len(x), max(3 * cfg.batch_size, 3 * k)),
    )
    km.fit(x, sample_weight=weights)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


# ---- groups, per-label pairing, merging ---------------------------------------------------

def _cluster_groups(x: np.ndarray, group_ids: np.ndarray, n_groups: int, k: int, cfg: ClusterConfig):
    """Cluster of each group and the centres, grouping as cfg.group_by says."""
    if n_groups == len(x) and np.array_equal(group_ids, np.arange(len(x))):
        return kmeans(x, k, cfg)  # every row its own group: no aggregation needed
    if cfg.group_by == "mean":
        means, counts = group_means(x, group_ids, n_groups)
        return kmeans(means, k, cfg, weights=counts)
    row_labels, centers = kmeans(x, k, cfg)
    votes = np.zeros((n_groups, k), dtype=np.int64)
    np.add.at(votes, (group_ids, row_labels), 1)
    return votes.argmax(axis=1), centers  # ties go to the lower cluster id: deterministic


def _relabel_by_size(group_labels: np.ndarray, centers: np.ndarray, group_sizes: np.ndarray):
    """Number clusters 0.. by decreasing row count, so reports read largest first."""
    k = len(centers)
    sizes = np.bincount(group_labels, weights=group_sizes, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    new_id = np.empty(k, dtype=np.int64)
    new_id[order] = np.arange(k)
    return new_id[group_labels], centers[order]


def _cluster_members(x, group_ids, n_groups, members, k, cfg):
    """k-means over the groups in `members` only: (cluster per member, centres)."""
    remap = np.full(n_groups, -1, dtype=np.int64)
    remap[members] = np.arange(len(members))
    rows = np.flatnonzero(remap[group_ids] >= 0)
    return _cluster_groups(x[rows], remap[group_ids[rows]], len(members), k, cfg)


def _pair(ref_centers: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Reference cluster for each of `centers`: distinct where possible (nearest-centre assignment),
    the nearest one for any left over when there are more clusters than reference clusters."""
    from scipy.optimize import linear_sum_assignment

    dist = ((centers[:, None, :] - ref_centers[None, :, :]) ** 2).sum(-1)
    target = dist.argmin(axis=1)
    rows, cols = linear_sum_assignment(dist)
    target[rows] = cols
    return target


def _per_label(x, group_ids, n_groups, members, group_has_real, k, cfg):
    """Real-anchored groups (among `members`) get k clusters; fake-only groups get up to k of their
    own, each joined to the real-anchored cluster with the nearest centre (every cluster keeps reals)."""
    anchored, fake_only = members[group_has_real[members]], members[~group_has_real[members]]
    if not len(anchored):
        return _cluster_members(x, group_ids, n_groups, fake_only, k, cfg)
    labels = np.full(n_groups, -1, dtype=np.int64)
    anchored_labels, centers = _cluster_members(x, group_ids, n_groups, anchored, k, cfg)
    labels[anchored] = anchored_labels
    if len(fake_only):
        fake_labels, fake_centers = _cluster_members(x, group_ids, n_groups, fake_only, min(k, len(fake_only)), cfg)
        labels[fake_only] = _pair(centers, fake_centers)[fake_labels]
    return labels[members], centers


def _cluster_subset(x, group_ids, n_groups, members, group_has_real, k, cfg):
    if cfg.per_label:
        return _per_label(x, group_ids, n_groups, members, group_has_real, k, cfg)
    return _cluster_members(x, group_ids, n_groups, members, k, cfg)


def _stratified(x, group_ids, n_groups, group_strata, group_has_real, group_sizes, cfg):
    """k clusters within the largest stratum; within each other stratum up to k, paired with the
    largest one's by nearest centres, so that every split holds out part of each stratum (a small
    dataset is never held out of an expert entirely)."""
    n_strata = int(group_strata.max()) + 1
    order = np.argsort(-np.bincount(group_strata, weights=group_sizes, minlength=n_strata), kind="stable")
    labels = np.full(n_groups, -1, dtype=np.int64)
    ref_centers = None
    for s in order:
        members = np.flatnonzero(group_strata == s)
        if ref_centers is None:
            labels[members], ref_centers = _cluster_subset(x, group_ids, n_groups, members, group_has_real, cfg.k, cfg)
            continue
        anchors = int(group_has_real[members].sum()) if cfg.per_label else 0
        k = min(cfg.k, anchors or len(members))
        sub_labels, centers = _cluster_subset(x, group_ids, n_groups, members, group_has_real, k, cfg)
        labels[members] = _pair(ref_centers, centers)[sub_labels]
    return labels, ref_centers


def degenerate(labels: np.ndarray, row_labels: np.ndarray, k: int) -> list[int]:
    """Clusters that lack reals or fakes: their split cannot give an AUC."""
    bad = []
    for c in range(k):
        members = row_labels[labels == c]
        if not ((members == 0).any() and (members == 1).any()):
            bad.append(c)
    return bad


def merge_degenerate(labels: np.ndarray, row_labels: np.ndarray, x: np.ndarray, centers: np.ndarray):
    """Merge, smallest first, each cluster lacking reals or fakes into the nearest other cluster.

    Returns (labels renumbered 0..k'-1, centres, merges as (from, into) in the input numbering).
    Stops at two clusters: fewer gives no split at all.
    """
    labels = labels.copy()
    alive = list(range(len(centers)))
    centers = {c: centers[c] for c in alive}
    merges = []
    while len(alive) > 2:
        bad = [c for c in alive if c in degenerate(labels, row_labels, max(alive) + 1)]
        if not bad:
            break
        victim = min(bad, key=lambda c: ((labels == c).sum(), c))
        others = [c for c in alive if c != victim]
        target = min(others, key=lambda c: float(((centers[c] - centers[victim]) ** 2).sum()))
        labels[labels == victim] = target
        centers[target] = x[labels == target].mean(axis=0)
        alive.remove(victim)
        merges.append((victim, target))
    new_id = np.full(len(centers), -1, dtype=np.int64)  # centers still holds every original cluster
    new_id[alive] = np.arange(len(alive))
    return new_id[labels], np.stack([centers[c] for c in alive]), merges


# ---- entry point --------------------------------------------------------------------------

def cluster(features: np.ndarray, origins: np.ndarray, row_labels: np.ndarray, ok: np.ndarray, cfg: ClusterConfig,
            strata: np.ndarray | None = None) -> Clustering:
    """Cluster the rows with features (`ok`); rows of an origin group all get the group's cluster.

    `row_labels`: 0 real / 1 fake / -1 unknown per row (used only by per_label and merging, never
    by k-means itself). `strata`: one value per row (the column cfg.stratify names); a group goes
    with the stratum of most of its rows. Rows without features join their group's cluster when the
    group has any encoded row; otherwise they stay UNASSIGNED.
    """
    if cfg.stratify and strata is None:
        raise ValueError(f"stratify={cfg.stratify!r} needs the column's values (strata=)")
    ok = np.asarray(ok, dtype=bool)
    codes, uniques = _factorize(np.asarray(origins))
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        raise ValueError("no image could be encoded; nothing to cluster")
    group_codes, group_ids = np.unique(codes[rows], return_inverse=True)
    n_groups = len(group_codes)
    x = prepare(features[rows] if len(rows) < len(features) else features, cfg)
    has_real = np.zeros(n_groups, dtype=bool)
    has_real[group_ids[row_labels[rows] == 0]] = True
    group_sizes = np.bincount(group_ids, minlength=n_groups)
    if strata is not None:
        strata_codes, _ = _factorize(np.asarray(strata)[rows])
        votes = np.zeros((n_groups, int(strata_codes.max()) + 1), dtype=np.int64)
        np.add.at(votes, (group_ids, strata_codes), 1)
        group_labels, centers = _stratified(x, group_ids, n_groups, votes.argmax(axis=1), has_real, group_sizes, cfg)
    else:
        group_labels, centers = _cluster_subset(x, group_ids, n_groups, np.arange(n_groups), has_real, cfg.k, cfg)
    group_labels, centers = _relabel_by_size(group_labels, centers, group_sizes)
    merges: list[tuple[int, int]] = []
    if cfg.merge_degenerate:
        ok_labels, centers, merges = merge_degenerate(group_labels[group_ids], row_labels[rows], x, centers)
        group_labels = np.empty(n_groups, dtype=np.int64)
        group_labels[group_ids] = ok_labels
    by_code = np.full(len(uniques), UNASSIGNED, dtype=np.int64)
    by_code[group_codes] = group_labels
    return Clustering(by_code[codes], centers, merges)


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(uniques)
