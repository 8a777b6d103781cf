"""PCA of extracted features and K-Means clustering with k chosen by silhouette.

Scaling (applied per channel before PCA) changes what PCA sees, so it is an explicit choice:

- ``"none"``: PCA on the raw pooled activations. Channels with large activations dominate;
  if one channel's variance dwarfs the rest, PC1 is that channel and its explained variance
  approaches 100% -- a statement about one channel's scale, not about structure.
  `ClusterAnalysis` reports the largest single channel's share of the variance so this is
  visible rather than mistaken for a finding.
- ``"standard"`` (z-score, `StandardScaler`): every channel gets unit variance. Post-ReLU
  channels that are almost always zero (near-constant) are inflated to the same weight as
  informative ones, so their rare spikes become noise that PCA must explain; explained
  variance then spreads over many components.
- ``"robust"`` (median / interquartile range, `RobustScaler`): less swayed by outliers.
  A channel whose IQR is 0 (more than half of its values equal, common after ReLU) keeps
  scale 1 (scikit-learn's rule), i.e. is only centred.

K-Means runs on the PCA scores with a fixed `n_init` and `random_state`; k is the value in
`k_range` with the highest silhouette (computed on one seeded subsample of at most
`silhouette_sample` images, the same for every k). Inertia is kept for an elbow plot.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import RobustScaler, StandardScaler
from threadpoolctl import threadpool_limits

from cxrlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SCALINGS: tuple[str, ...] = ("none", "standard", "robust")


def make_scaler(scaling: str):
    """The scikit-learn scaler for `scaling`, or None for ``"none"``."""
    if scaling not in SCALINGS:
        raise ConfigError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    return {"none": None, "standard": StandardScaler(), "robust": RobustScaler()}[scaling]


def thread_limit(n_threads: int | None):
    """Cap BLAS and OpenMP threads (threadpoolctl) inside a `with` block; None leaves them.

    On a busy or shared machine, OpenMP's spinning threads in K-Means can run several times
    slower than a single thread (measured in bench/bench_analysis.py); 1 avoids that.
    """
    if n_threads is None:
        return contextlib.nullcontext()
    if int(n_threads) < 1:
        raise ConfigError(f"n_threads={n_threads} must be >= 1 (or None for the library default)")
    return threadpool_limits(limits=int(n_threads))


def check_features(X) -> np.ndarray:
    """(N, C) finite float array or a DataError saying what is wrong."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise DataError(f"features must be a 2-D (N, C) array; got shape {X.shape}")
    if X.shape[0] < 3 or X.shape[1] < 1:
        raise DataError(f"features of shape {X.shape} are too few; need N >= 3 rows, C >= 1")
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(f"features hold {int(bad.sum())} NaN/inf values (first in row {row})")
    return X


class ClusterAnalysis:
    """Scale -> PCA -> K-Means with k chosen by silhouette over `k_range` (or fixed by `k`).

    Learned attributes: `scaler_`, `pca_`, `n_components_`, `embedding_` (N, n_components_),
    `explained_variance_ratio_`, `k_values_`, `silhouette_`, `inertia_` (one per k in
    `k_values_`), `k_`, `k_source_` ("silhouette" or "override"), `kmeans_`, `labels_` (N,),
    `top_channel_`, `top_channel_variance_share_` (the single channel with most variance after
    scaling, and its share of the total).
    """

    def __init__(
        self,
        k_range: tuple[int, int] = (2, 10),
        k: int | None = None,
        scaling: str = "none",
        n_components: int = 50,
        n_init: int = 10,  # K-Means restarts; fixed so results do not depend on a default
        silhouette_sample: int = 5000,  # silhouette is O(n^2); a subsample keeps it fast
        random_state: int = 0,
        n_threads: int | None = None,  # BLAS/OpenMP cap during fit; None = library default
    ):
        self.k_range = k_range
        self.k = k
        self.scaling = scaling
        self.n_components = n_components
        self.n_init = n_init
        self.silhouette_sample = silhouette_sample
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(self, X) -> ClusterAnalysis:
        with thread_limit(self.n_threads):
            return self._fit(check_features(X))

    def _fit(self, X: np.ndarray) -> ClusterAnalysis:
        k_values = self._check_params(X.shape[0])
        self.scaler_ = make_scaler(self.scaling)
        Xs = X if self.scaler_ is None else self.scaler_.fit_transform(X)
        variances = Xs.var(axis=0)
        self.top_channel_ = int(np.argmax(variances))
        total = float(variances.sum())
        self.top_channel_variance_share_ = float(variances.max() / total) if total > 0 else 0.0
        self.n_components_ = int(min(self.n_components, *X.shape))
        if self.n_components_ < self.n_components:
            log.info(
                "n_components=%d reduced to %d = min(N, C)", self.n_components, self.n_components_
            )
        self.pca_ = PCA(n_components=self.n_components_, random_state=self.random_state)
        self.embedding_ = self.pca_.fit_transform(Xs)  # (N, n_components_)
        self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
        self.k_values_ = k_values
        models, self.silhouette_, self.inertia_ = self._scan(k_values)
        if self.k is None:
            if np.isnan(self.silhouette_).all():
                raise DataError("silhouette is undefined for every k (are all features equal?)")
            self.k_ = int(k_values[int(np.nanargmax(self.silhouette_))])
            self.k_source_ = "silhouette"
        else:
            self.k_, self.k_source_ = int(self.k), "override"
        self.kmeans_ = models[self.k_] if self.k_ in models else self._kmeans(self.k_)
        self.labels_ = self.kmeans_.labels_.astype(np.int64)
        log.info("k=%d (%s); cluster sizes %s", self.k_, self.k_source_, np.bincount(self.labels_))
        return self

    def _check_params(self, n: int) -> np.ndarray:
        try:
            lo, hi = (int(v) for v in self.k_range)
        except (TypeError, ValueError):
            raise ConfigError(f"k_range={self.k_range!r} must be two integers (min, max)") from None
        if not 2 <= lo <= hi:
            raise ConfigError(f"k_range=({lo}, {hi}) must satisfy 2 <= min <= max")
        if hi > n - 1:
            raise ConfigError(f"k_range max={hi} needs at least {hi + 1} samples; got N={n}")
        if self.k is not None and not 2 <= int(self.k) <= n - 1:
            raise ConfigError(f"k={self.k} must be between 2 and N-1={n - 1}")
        if self.n_init < 1 or self.n_components < 1:
            raise ConfigError(
                f"n_init={self.n_init} and n_components={self.n_components} must be >= 1"
            )
        return np.arange(lo, hi + 1)

    def _kmeans(self, k: int) -> KMeans:
        return KMeans(n_clusters=k, n_init=self.n_init, random_state=self.random_state).fit(
            self.embedding_
        )

    def _scan(self, k_values: np.ndarray):
        Z = self.embedding_
        rng = np.random.default_rng(self.random_state)
        n_sub = min(self.silhouette_sample, Z.shape[0])
        sub = np.sort(rng.choice(Z.shape[0], size=n_sub, replace=False))
        models, sil, inertia = {}, [], []
        for k in k_values:
            km = self._kmeans(int(k))
            models[int(k)] = km
            inertia.append(float(km.inertia_))
            labels = km.labels_[sub]
            n_lab = len(np.unique(labels))
            ok = 2 <= n_lab <= n_sub - 1
            sil.append(float(silhouette_score(Z[sub], labels)) if ok else float("nan"))
        return models, np.asarray(sil), np.asarray(inertia)

    def summary(self) -> dict:
        """JSON-ready numbers of the fit (explained variance, k scan, sizes, diagnostics)."""
        evr = self.explained_variance_ratio_
        return {
            "scaling": self.scaling,
            "n_samples": int(self.embedding_.shape[0]),
            "n_channels": int(self.pca_.n_features_in_),
            "n_components": self.n_components_,
            "explained_variance_ratio": [float(v) for v in evr],
            "cumulative_explained_variance": [float(v) for v in np.cumsum(evr)],
            "top_channel": self.top_channel_,
            "top_channel_variance_share": self.top_channel_variance_share_,
            "k_values": [int(k) for k in self.k_values_],
            "silhouette": [None if np.isnan(s) else float(s) for s in self.silhouette_],
            "inertia": [float(v) for v in self.inertia_],
            "k": self.k_,
            "k_source": self.k_source_,
            "cluster_sizes": [int(c) for c in np.bincount(self.labels_, minlength=self.k_)],
            "n_init": self.n_init,
            "silhouette_sample": int(min(self.silhouette_sample, self.embedding_.shape[0])),
            "random_state": self.random_state,
        }
