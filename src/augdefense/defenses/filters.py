"""Data-sanitisation (filter) defenses: spectral signatures, activation clustering and deep k-NN.

The protocol these papers use: train a model on the poisoned training set with no defense, extract
the penultimate-layer features of every training image, let a filter pick training samples to
remove (or, for deep k-NN's relabel mode, to relabel), then train a fresh model on what is kept.
The filters here are the middle step only; the plumbing asks ``getattr(defense, "is_filter", False)``
and calls :meth:`FilterDefense.sanitize`. Training itself is the baseline's (``Defense.mix`` etc.
are inherited unchanged, so ``laplace`` still composes).

``expected_poisons`` (class -> number of poisons the defender assumes in that class) is the attack's
budget, as in the re-implementation of these filters by Geiping et al. (``forest/filtering_defenses.py``
in JonasGeiping/data-poisoning), which the augmentation papers compared against.
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

    def sanitize(self, features: torch.Tensor, labels: torch.Tensor, expected_poisons: dict[int, int]) -> dict:
        """features: float [N, D] (CPU); labels: int64 [N]; expected_poisons: class -> number of
        poisons the defender assumes in that class (the attack's budget).
        Returns {"removed": int64 sorted unique indices, "scores": float [N] (higher = more
        suspicious, nan where the filter gives none), "labels": int64 [N] (the labels to train on:
        equal to the input except in deep_knn relabel mode)}."""
        feats, labs = self._check_inputs(features, labels)
        expected = {int(c): int(n) for c, n in (expected_poisons or {}).items()}
        removed, scores, new_labels = self._filter(feats, labs, expected)
        removed = torch.unique(torch.as_tensor(removed, dtype=torch.int64))  # sorted, unique
        return {
            "removed": removed,
            "scores": torch.as_tensor(scores, dtype=torch.float32),
            "labels": torch.as_tensor(new_labels, dtype=torch.int64),
        }

    @abstractmethod
    def _filter(self, feats: np.ndarray, labels: np.ndarray, expected: dict[int, int]):
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
    """Spectral signatures (Tran, Li & Madry, NeurIPS 2018, Alg. 1 and their code): per class,
    centre the class's features, score each by its squared projection on the top right-singular
    vector of the centred matrix, remove the ``multiplier x expected`` highest scores (the paper's
    1.5 x epsilon overestimate, also the re-implementation's ``overestimation_factor=1.5``;
    floor, as its ``int(...)``). With ``expected_fraction`` the defender assumes
    ``round(expected_fraction x class size)`` poisons in every class instead. Never removes more
    than a class holds; classes expecting 0 poisons lose nothing (their scores are still given)."""

    type_name = "spectral_signatures"
    params = {
        "multiplier": Param(
            "number",
            "remove multiplier x the expected poisons per class (Tran et al.: 1.5)",
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

    def budget(self, class_size: int, expected: int) -> int:
        """Number of samples removed from a class of ``class_size`` expecting ``expected`` poisons."""
        if self.expected_fraction is not None:
            expected = int(round(self.expected_fraction * class_size))
        return max(0, min(class_size, int(self.multiplier * expected)))

    def _filter(self, feats, labels, expected):
        scores = np.full(len(labels), np.nan)
        removed = []
        for c, idx in self._class_indices(labels).items():
            centred = torch.from_numpy(feats[idx] - feats[idx].mean(0, keepdims=True))
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            class_scores = (centred @ vh[0]).pow(2).numpy()
            scores[idx] = class_scores
            n_remove = self.budget(len(idx), expected.get(c, 0))
            if n_remove > 0:
                # stable sort on -score: the highest scores, ties broken by index
                removed.append(idx[np.argsort(-class_scores, kind="stable")[:n_remove]])
        removed = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
        return removed, scores, labels.copy()


@register
class ActivationClustering(FilterDefense):
    """Activation clustering (Chen et al. 2018, §4 and IBM ART's ActivationDefence): per class,
    reduce the features to ``n_components`` (10) dimensions with FastICA (ART's max_iter=1000,
    tol=0.005) or PCA, split them into 2 clusters with k-means, and flag the smaller cluster.
    ``removal: size`` removes it only when its share of the class is <= ``size_threshold``
    (0.35, Chen et al.'s relative-size analysis and ART's default); ``removal: always`` removes
    it in every class (Geiping et al.'s re-implementation). A class with fewer samples than
    components is reduced to (size - 1) dimensions; classes of < 2 samples, or whose samples are
    all identical, are left alone (nan scores). Score: the share of its class outside a sample's
    cluster (> 0.5 in the smaller cluster, higher for smaller clusters)."""

    type_name = "activation_clustering"
    params = {
        "n_components": Param("integer", "dimensions the features are reduced to", default=10, minimum=1),
        "reduction": Param("string", "FastICA (Chen et al.) or PCA", default="ica", enum=("ica", "pca")),
        "removal": Param(
            "string",
            "'size': the smaller cluster when small enough; 'always': in every class",
            default="size",
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
        dims = max(1, min(self.n_components, x.shape[1], x.shape[0] - 1))
        if self.reduction == "pca":
            from sklearn.decomposition import PCA

            return PCA(n_components=dims, random_state=self.seed).fit_transform(x)
        from sklearn.decomposition import FastICA

        return FastICA(n_components=dims, max_iter=1000, tol=0.005, random_state=self.seed).fit_transform(x)

    def _filter(self, feats, labels, expected):
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
    """Deep k-NN (Peri et al. 2019/2020, and their code neeharperi/DeepKNNDefense): a sample
    whose label differs from the plurality label of its k nearest neighbours in feature space
    (Euclidean, sklearn NearestNeighbors, the sample itself excluded) is removed (``mode:
    remove``) or relabelled to that plurality (``mode: relabel``). A tie that includes the
    sample's own label keeps it. ``k: auto`` (default) sets k = ``k_factor`` (2) x the total
    expected number of poisons, so the poisons can never outvote their neighbours - the choice
    of Geiping et al.'s re-implementation, which cites Peri et al. for the factor of 2 (Peri et
    al. swept k from 1 to 500); an integer k overrides it. k is capped at N - 1. Neighbours are
    queried QUERY_CHUNK rows at a time: memory is O(QUERY_CHUNK x k), never N x N. Score: the
    fraction of a sample's neighbours whose label differs from its own."""

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
    }

    def __init__(self, spec, num_classes, name="", seed=0):
        super().__init__(spec, num_classes, name, seed)
        self.k = self.spec["k"]
        self.k_factor = float(self.spec["k_factor"])
        self.mode = self.spec["mode"]

    def resolve_k(self, n: int, expected: dict[int, int]) -> int:
        k = self.k if self.k != "auto" else int(round(self.k_factor * sum(expected.values())))
        return max(1, min(int(k), n - 1))

    def _filter(self, feats, labels, expected):
        n = len(labels)
        new_labels = labels.copy()
        if n < 2:
            return np.zeros(0, dtype=np.int64), np.full(n, np.nan), new_labels
        k = self.resolve_k(n, expected)
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
