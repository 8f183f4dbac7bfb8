"""Data-sanitisation (filter) defenses: spectral signatures, activation clustering and deep k-NN.

The protocol these papers use: train a model on the poisoned training set with no defense, extract
the penultimate-layer features of every training image, let a filter pick training samples to
remove (or, for deep k-NN's relabel mode, to relabel), then train a fresh model on what is kept.
The filters here are the middle step only; the plumbing asks ``getattr(defense, "is_filter", False)``
and calls :meth:`FilterDefense.sanitize`. Training itself is the baseline's (``Defense.mix`` etc.
are inherited unchanged, so ``laplace`` still composes).

A filter knows the attack's budget (``budget``: how many poisons the defender assumes in the whole
training set), never which class holds them, as in Geiping et al.'s re-implementation of these
filters (JonasGeiping/data-poisoning, ``forest/filtering_defenses.py``), which produced the papers'
filter rows; each class's defaults follow that code, the original papers' variants are options.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
import torch

from augdefense.defenses import register
from augdefense.defenses.base import Defense
from augdefense.params import OPTIONAL, Param

# sklearn is imported inside the methods that use it: the registry loads this module in every job, and
# the import would cost every training job about 1.5 s.

# deep k-NN queries neighbours this many rows at a time, so no N x N distance matrix is ever built.
QUERY_CHUNK = 4096


class FilterDefense(Defense, metaclass=ABCMeta):
    """Base for filters: trains like the baseline (inherits Defense.mix etc. unchanged)."""

    is_filter = True

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.seed = int(seed)

    def sanitize(self, features: torch.Tensor, labels: torch.Tensor, budget: int) -> dict:
        """features: float [N, D] (CPU); labels: int64 [N]; budget: the number of poisons the
        defender assumes in the whole training set (the attack's budget; not where they are).
        Returns {"removed": int64 sorted unique indices, "scores": float [N] (higher = more
        suspicious, nan where the filter gives none), "labels": int64 [N] (the labels to train on:
        equal to the input except in deep_knn relabel mode)}."""
        feats, labs = self._check_inputs(features, labels)
        removed, scores, new_labels = self._filter(feats, labs, int(budget))
        removed = torch.unique(torch.as_tensor(removed, dtype=torch.int64))  # sorted, unique
        return {
            "removed": removed,
            "scores": torch.as_tensor(scores, dtype=torch.float32),
            "labels": torch.as_tensor(new_labels, dtype=torch.int64),
        }

    @abstractmethod
    def _filter(self, feats: np.ndarray, labels: np.ndarray, budget: int):
        """Return (removed indices, scores [N], labels [N]) as numpy arrays."""

    @staticmethod
    def _check_inputs(features, labels) -> tuple[np.ndarray, np.ndarray]:
        feats = torch.as_tensor(features).detach().cpu()
        labs = torch.as_tensor(labels).detach().cpu()
        if feats.ndim != 2:
            raise ValueError(f"features must be [N, D]; got shape {tuple(feats.shape)}")
        if labs.ndim != 1 or labs.shape[0] != feats.shape[0]:
            raise ValueError(f"labels must be [N] with N = {feats.shape[0]}; got shape {tuple(labs.shape)}")
        if not torch.isfinite(feats).all():
            raise ValueError("features contain nan or inf")
        return feats.double().numpy(), labs.long().numpy()

    @staticmethod
    def _class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
        return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


@register
class SpectralSignatures(FilterDefense):
    """Spectral signatures (Tran, Li & Madry, NeurIPS 2018, Alg. 1): in every class, centre the
    class's features, score each by its squared projection on the top right-singular vector of the
    centred matrix, and remove the ``int(multiplier x budget)`` highest scores (capped at the class
    size - 1) - from every class, since the defender does not know which one is poisoned: Geiping
    et al.'s ``_SpectralSignaturesDefense`` (``overestimation_factor=1.5`` of the whole budget per
    class). With ``expected_fraction`` the defender instead assumes ``round(expected_fraction x
    class size)`` poisons in each class (Tran et al.'s epsilon per class)."""

    type_name = "spectral_signatures"
    params = {
        "multiplier": Param(
            "number",
            "remove int(multiplier x the budget) from every class (Tran et al.'s and forest's 1.5)",
            default=1.5,
            exclusive_minimum=0,
        ),
        "expected_fraction": Param(
            "number",
            "assume this poison share in every class instead of the budget",
            default=OPTIONAL,
            exclusive_minimum=0,
            maximum=1,
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.multiplier = float(self.spec["multiplier"])
        fraction = self.spec.get("expected_fraction")
        self.expected_fraction = None if fraction is None else float(fraction)

    def removals(self, class_size: int, budget: int) -> int:
        """Number of samples removed from a class of ``class_size`` when the defender assumes
        ``budget`` poisons in the training set."""
        expected = budget if self.expected_fraction is None else int(round(self.expected_fraction * class_size))
        return max(0, min(class_size - 1, int(self.multiplier * expected)))

    def _filter(self, feats, labels, budget):
        scores = np.full(len(labels), np.nan)
        removed = []
        for idx in self._class_indices(labels).values():
            centred = torch.from_numpy(feats[idx] - feats[idx].mean(0, keepdims=True))
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            class_scores = (centred @ vh[0]).pow(2).numpy()
            scores[idx] = class_scores
            n_remove = self.removals(len(idx), budget)
            if n_remove > 0:
                # stable sort on -score: the highest scores, ties broken by index
                removed.append(idx[np.argsort(-class_scores, kind="stable")[:n_remove]])
        removed = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
        return removed, scores, labels.copy()


@register
class ActivationClustering(FilterDefense):
    """Activation clustering: per class, split the features into 2 clusters with k-means and flag
    the smaller cluster. Defaults follow Geiping et al.'s ``_ActivationClustering`` (the papers'
    filter rows): k-means on the raw features (``reduction: none``) and the smaller cluster removed
    in every class (``removal: always``). Chen et al. (2018, §4) and IBM ART's ActivationDefence
    first reduce the features to ``n_components`` (10) dimensions with FastICA (``reduction: ica``;
    ART's max_iter=1000, tol=0.005; or ``pca``) and remove the smaller cluster only when its share
    of the class is <= ``size_threshold`` (``removal: size``, 0.35). A class with fewer samples
    than components is reduced to (size - 1) dimensions; classes of < 2 samples, or whose samples
    are all identical, are left alone (nan scores). It uses neither the budget nor the class.
    Score: the share of its class outside a sample's cluster (> 0.5 in the smaller cluster)."""

    type_name = "activation_clustering"
    params = {
        "n_components": Param("integer", "dimensions the features are reduced to", default=10, minimum=1),
        "reduction": Param(
            "string",
            "none: raw features (forest); ica: FastICA (Chen et al.); pca",
            default="none",
            enum=("none", "ica", "pca"),
        ),
        "removal": Param(
            "string",
            "'always': the smaller cluster of every class (forest); 'size': only when small enough (Chen et al.)",
            default="always",
            enum=("size", "always"),
        ),
        "size_threshold": Param(
            "number",
            "largest share of a class removed in 'size' mode",
            default=0.35,
            exclusive_minimum=0,
            exclusive_maximum=1,
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.n_components = self.spec["n_components"]
        self.reduction = self.spec["reduction"]
        self.removal = self.spec["removal"]
        self.size_threshold = float(self.spec["size_threshold"])

    def reduce(self, x: np.ndarray) -> np.ndarray:
        if self.reduction == "none":
            return x
        dims = max(1, min(self.n_components, x.shape[1], x.shape[0] - 1))
        if self.reduction == "pca":
            from sklearn.decomposition import PCA

            return PCA(n_components=dims, random_state=self.seed).fit_transform(x)
        from sklearn.decomposition import FastICA

        return FastICA(n_components=dims, max_iter=1000, tol=0.005, random_state=self.seed).fit_transform(x)

    def _filter(self, feats, labels, budget):
        scores = np.full(len(labels), np.nan)
        removed = []
        for idx in self._class_indices(labels).values():
            x = feats[idx]
            if len(idx) < 2 or np.ptp(x, axis=0).max() == 0:
                continue
            reduced = self.reduce(x)
            if not np.isfinite(reduced).all():
                continue
            from sklearn.cluster import KMeans

            assign = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit_predict(reduced)
            sizes = np.bincount(assign, minlength=2)
            scores[idx] = 1.0 - sizes[assign] / len(idx)
            small = int(np.argmin(sizes))  # ties: cluster 0
            share = sizes[small] / len(idx)
            if sizes[small] > 0 and (self.removal == "always" or share <= self.size_threshold):
                removed.append(idx[assign == small])
        removed = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
        return removed, scores, labels.copy()


@register
class DeepKNN(FilterDefense):
    """Deep k-NN (Peri et al. 2019/2020): look at each sample's k nearest neighbours in feature
    space (Euclidean, sklearn NearestNeighbors, the sample itself excluded). Defaults follow Geiping
    et al.'s ``_DeepKNN`` (the papers' rows): ``rule: majority`` keeps a sample when at least half
    of its neighbours share its label, and flagged samples are removed (``mode: remove``); Peri et
    al.'s ``rule: plurality`` flags a sample whose label is not (tied for) the most common among its
    neighbours, and their ``mode: relabel`` gives it that plurality label instead. ``k: auto``
    (default) sets k = int(``k_factor`` (2) x the budget), so the poisons can never outvote their
    neighbours; an integer k overrides it. k is capped at N - 1. Neighbours are queried QUERY_CHUNK
    rows at a time: memory is O(QUERY_CHUNK x k), never N x N. Score: the fraction of a sample's
    neighbours whose label differs from its own."""

    type_name = "deep_knn"
    params = {
        "k": Param(
            any_of=(Param("integer", minimum=1), Param(enum=("auto",))),
            default="auto",
            doc="neighbours; 'auto' = k_factor x the expected number of poisons",
        ),
        "k_factor": Param(
            "number", "k = k_factor x expected poisons when k is 'auto'", default=2.0, exclusive_minimum=0
        ),
        "mode": Param("string", "remove flagged samples or relabel them", default="remove", enum=("remove", "relabel")),
        "rule": Param(
            "string",
            "majority: keep when >= half the neighbours agree (forest); plurality (Peri et al.)",
            default="majority",
            enum=("majority", "plurality"),
        ),
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.k = self.spec["k"]
        self.k_factor = float(self.spec["k_factor"])
        self.mode = self.spec["mode"]
        self.rule = self.spec["rule"]

    def resolve_k(self, n: int, budget: int) -> int:
        k = self.k if self.k != "auto" else int(self.k_factor * budget)
        return max(1, min(int(k), n - 1))

    def _filter(self, feats, labels, budget):
        n = len(labels)
        new_labels = labels.copy()
        if n < 2:
            return np.zeros(0, dtype=np.int64), np.full(n, np.nan), new_labels
        k = self.resolve_k(n, budget)
        n_labels = max(self.num_classes, int(labels.max()) + 1)
        from sklearn.neighbors import NearestNeighbors

        index = NearestNeighbors(n_neighbors=k + 1).fit(feats)
        scores = np.empty(n)
        flagged = np.zeros(n, dtype=bool)
        plurality = labels.copy()
        for start in range(0, n, QUERY_CHUNK):
            stop = min(start + QUERY_CHUNK, n)
            neighbours = index.kneighbors(feats[start:stop], n_neighbors=k + 1, return_distance=False)
            neighbours = self._drop_self(neighbours, np.arange(start, stop), k)
            own = labels[start:stop]
            counts = np.zeros((stop - start, n_labels), dtype=np.int64)
            np.add.at(counts, (np.arange(stop - start)[:, None], labels[neighbours]), 1)
            own_count = counts[np.arange(stop - start), own]
            if self.rule == "majority":
                flagged[start:stop] = 2 * own_count < k  # forest: keep when at least half agree
            else:
                flagged[start:stop] = own_count < counts.max(1)
            plurality[start:stop] = counts.argmax(1)  # ties: the lowest label
            scores[start:stop] = 1.0 - own_count / k
        if self.mode == "relabel":
            new_labels[flagged] = plurality[flagged]
            return np.zeros(0, dtype=np.int64), scores, new_labels
        return np.flatnonzero(flagged), scores, new_labels

    @staticmethod
    def _drop_self(neighbours: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """[c, k+1] neighbour indices -> [c, k] without the query itself (with exact duplicates
        the query may not come first, or at all; then the farthest is dropped instead)."""
        drop = neighbours == rows[:, None]
        first = drop.cumsum(1) == 1
        drop &= first  # at most one per row
        missing = ~drop.any(1)
        drop[missing, -1] = True
        return neighbours[~drop].reshape(len(rows), k)
