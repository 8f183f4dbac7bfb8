"""Filter defenses (spectral signatures, activation clustering, deep k-NN) on synthetic features
with planted poisons: they find the planted samples, respect their budgets and stay in memory."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from augdefense import defenses
from augdefense.defenses import filters
from augdefense.errors import ConfigError

# FastICA finds no independent components in the clean classes' isotropic Gaussian features and
# says so; real penultimate-layer features are far from Gaussian.
pytestmark = pytest.mark.filterwarnings("ignore:FastICA did not converge")

C, PER_CLASS, DIM, N_POISON = 3, 300, 32, 30


def clean_features(rng: np.random.Generator, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """PER_CLASS unit Gaussian samples per class in DIM dimensions, class c centred at spread * e_c."""
    labels = np.repeat(np.arange(C), PER_CLASS)
    feats = rng.standard_normal((C * PER_CLASS, DIM))
    feats[np.arange(C * PER_CLASS), labels] += spread
    return feats, labels


def shifted_poisons(seed: int = 0, shift: float = 8.0):
    """N_POISON extra class-0 samples moved by ``shift`` along a random unit direction (a backdoor
    trigger's signature). Returns features, labels, the planted indices."""
    rng = np.random.default_rng(seed)
    feats, labels = clean_features(rng, spread=6.0)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    poison = rng.standard_normal((N_POISON, DIM)) + shift * direction
    poison[:, 0] += 6.0
    feats = np.concatenate([feats, poison])
    labels = np.concatenate([labels, np.zeros(N_POISON, dtype=np.int64)])
    planted = np.arange(C * PER_CLASS, C * PER_CLASS + N_POISON)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(labels), planted


def colliding_poisons(seed: int = 0):
    """N_POISON extra samples labelled 0 whose features sit in class 1's cluster (feature collision)."""
    rng = np.random.default_rng(seed)
    feats, labels = clean_features(rng, spread=10.0)
    poison = rng.standard_normal((N_POISON, DIM))
    poison[:, 1] += 10.0
    feats = np.concatenate([feats, poison])
    labels = np.concatenate([labels, np.zeros(N_POISON, dtype=np.int64)])
    planted = np.arange(C * PER_CLASS, C * PER_CLASS + N_POISON)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(labels), planted


def precision_recall(removed: torch.Tensor, planted: np.ndarray) -> tuple[float, float]:
    hits = len(set(removed.tolist()) & set(planted.tolist()))
    return hits / max(len(removed), 1), hits / len(planted)


def build(spec: dict, seed: int = 0):
    return defenses.build(spec, C, name="f", seed=seed)


BUDGET = N_POISON  # the poisons the defender assumes, not where they are


# -- common output contract -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "spectral_signatures"},
        {"type": "activation_clustering", "removal": "always"},
        {"type": "deep_knn"},
        {"type": "deep_knn", "mode": "relabel"},
    ],
)
def test_output_contract(spec):
    feats, labels, _ = shifted_poisons()
    filt = build(spec)
    assert getattr(filt, "is_filter", False) is True
    assert isinstance(filt, filters.FilterDefense)
    out = filt.sanitize(feats, labels, BUDGET)
    n = len(labels)
    removed = out["removed"]
    assert removed.dtype == torch.int64 and removed.ndim == 1
    assert torch.equal(removed, torch.unique(removed))  # sorted and unique
    assert len(removed) == 0 or (removed.min() >= 0 and removed.max() < n)
    assert out["scores"].shape == (n,) and out["scores"].is_floating_point()
    assert out["labels"].dtype == torch.int64 and out["labels"].shape == (n,)
    if spec.get("mode") != "relabel":
        assert torch.equal(out["labels"], labels)
    # a filter trains like the baseline
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    mixed, soft = filt.mix(x, y, epoch=0)
    assert torch.equal(mixed, x) and torch.equal(soft, torch.nn.functional.one_hot(y, C).float())


def test_mixing_defenses_are_not_filters():
    assert getattr(build({"type": "none"}), "is_filter", False) is False
    assert getattr(build({"type": "mixup"}), "is_filter", False) is False


def test_bad_inputs_are_rejected():
    filt = build({"type": "spectral_signatures"})
    with pytest.raises(ValueError, match="features"):
        filt.sanitize(torch.zeros(10), torch.zeros(10, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="labels"):
        filt.sanitize(torch.zeros(10, 4), torch.zeros(9, dtype=torch.long), 0)


# -- spectral signatures --------------------------------------------------------------------------


def test_spectral_signatures_finds_planted_poisons():
    feats, labels, planted = shifted_poisons()
    out = build({"type": "spectral_signatures"}).sanitize(feats, labels, BUDGET)
    precision, recall = precision_recall(out["removed"], planted)
    assert recall >= 0.9
    # 1.5 x the budget leaves every class, since the defender does not know which is poisoned
    assert np.bincount(labels.numpy()[out["removed"].numpy()], minlength=C).tolist() == [45, 45, 45]
    assert precision >= 0.9 * N_POISON / (3 * 45)
    # planted samples score above the clean ones of their class
    scores = out["scores"].numpy()
    clean0 = np.flatnonzero(labels.numpy() == 0)[:PER_CLASS]
    assert np.median(scores[planted]) > np.percentile(scores[clean0], 95)
    assert not np.isnan(scores).any()  # scored in every class


def test_spectral_signatures_removes_the_same_share_of_the_budget_from_every_class():
    """Geiping et al.'s rule: int(multiplier x budget) from each class, capped at its size - 1."""
    feats, labels, _ = shifted_poisons()
    labels_np = labels.numpy()

    def per_class(spec, budget):
        out = build(spec).sanitize(feats, labels, budget)
        return np.bincount(labels_np[out["removed"].numpy()], minlength=C).tolist()

    assert per_class({"type": "spectral_signatures"}, 7) == [10, 10, 10]  # floor(1.5 x 7)
    assert per_class({"type": "spectral_signatures", "multiplier": 1}, 12) == [12, 12, 12]
    capped = [PER_CLASS + N_POISON - 1, PER_CLASS - 1, PER_CLASS - 1]
    assert per_class({"type": "spectral_signatures"}, 10_000) == capped
    assert per_class({"type": "spectral_signatures"}, 0) == [0, 0, 0]


def test_spectral_signatures_expected_fraction_overrides_budget():
    feats, labels, planted = shifted_poisons()
    filt = build({"type": "spectral_signatures", "expected_fraction": 0.1})
    out = filt.sanitize(feats, labels, 999)  # ignored: every class assumes 10% poisons
    per_class = np.bincount(labels.numpy()[out["removed"].numpy()], minlength=C)
    # class 0 holds 330 samples: round(33) poisons -> floor(49.5) = 49; the others round(30) -> 45
    assert per_class.tolist() == [49, 45, 45]
    assert precision_recall(out["removed"], planted)[1] >= 0.9


def test_spectral_signatures_removes_the_top_scores():
    feats, labels, _ = shifted_poisons(seed=3)
    out = build({"type": "spectral_signatures"}).sanitize(feats, labels, 20)
    scores = out["scores"].numpy()
    top = [c[np.argsort(-scores[c])[:30]] for c in (np.flatnonzero(labels.numpy() == k) for k in range(C))]
    assert sorted(np.concatenate(top).tolist()) == out["removed"].tolist()


# -- activation clustering ------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["ica", "pca"])
def test_activation_clustering_finds_planted_cluster(reduction):
    feats, labels, planted = shifted_poisons()
    spec = {"type": "activation_clustering", "reduction": reduction, "removal": "size"}  # Chen et al.'s
    out = build(spec).sanitize(feats, labels, BUDGET)
    precision, recall = precision_recall(out["removed"], planted)
    assert recall >= 0.9 and precision >= 0.9
    # "size" mode: the clean classes split about evenly, so neither loses anything
    assert set(labels.numpy()[out["removed"].numpy()].tolist()) == {0}


@pytest.mark.parametrize("reduction", ["none", "ica"])
def test_activation_clustering_always_removes_a_cluster_everywhere(reduction):
    """Geiping et al.'s defaults (raw features, the smaller cluster of every class), and with ICA."""
    feats, labels, planted = shifted_poisons()
    filt = build({"type": "activation_clustering", "reduction": reduction})
    assert filt.removal == "always" and build({"type": "activation_clustering"}).reduction == "none"
    out = filt.sanitize(feats, labels, BUDGET)
    removed_labels = labels.numpy()[out["removed"].numpy()]
    per_class = np.bincount(removed_labels, minlength=C)
    assert (per_class > 0).all()
    assert (per_class[1:] <= PER_CLASS / 2).all()  # the smaller cluster only
    precision, recall = precision_recall(out["removed"][removed_labels == 0], planted)
    assert precision >= 0.9 and recall >= 0.9


def test_activation_clustering_size_threshold():
    feats, labels, planted = shifted_poisons()
    # the planted cluster is 30/330 = 9% of class 0: a 5% threshold lets it stay
    spec = {"type": "activation_clustering", "removal": "size", "size_threshold": 0.05, "reduction": "ica"}
    out = build(spec).sanitize(feats, labels, BUDGET)
    assert len(out["removed"]) == 0
    # scores still rank the planted samples as suspicious
    scores = out["scores"].numpy()
    assert (scores[planted] > 0.5).mean() >= 0.9


def test_activation_clustering_handles_small_classes():
    rng = np.random.default_rng(0)
    feats = torch.tensor(rng.standard_normal((1 + 3 + 40, 16)), dtype=torch.float32)
    feats[4:] = 0.0  # class 2: 40 identical samples
    labels = torch.tensor([0] + [1] * 3 + [2] * 40)
    out = build({"type": "activation_clustering", "reduction": "ica"}).sanitize(feats, labels, 0)
    scores = out["scores"]
    assert torch.isnan(scores[0])  # a single sample is not clustered
    assert not torch.isnan(scores[1:4]).any()  # 3 samples < 10 components: reduced to 2 dims
    assert torch.isnan(scores[4:]).all()  # nothing to split
    assert set(out["removed"].tolist()) <= {1, 2, 3} and len(out["removed"]) == 1


def test_activation_clustering_is_deterministic_given_seed():
    feats, labels, _ = shifted_poisons()
    a = build({"type": "activation_clustering", "reduction": "ica"}, seed=5).sanitize(feats, labels, 0)
    b = build({"type": "activation_clustering", "reduction": "ica"}, seed=5).sanitize(feats, labels, 0)
    assert torch.equal(a["removed"], b["removed"])


# -- deep k-NN ------------------------------------------------------------------------------------


def test_deep_knn_removes_colliding_poisons():
    feats, labels, planted = colliding_poisons()
    filt = build({"type": "deep_knn"})
    assert filt.resolve_k(len(labels), BUDGET) == 2 * N_POISON  # k = 2 x expected poisons
    out = filt.sanitize(feats, labels, BUDGET)
    precision, recall = precision_recall(out["removed"], planted)
    assert recall >= 0.9 and precision >= 0.9
    assert torch.equal(out["labels"], labels)
    scores = out["scores"].numpy()
    assert scores[planted].min() > 0.5 and np.median(np.delete(scores, planted)) < 0.2


def test_deep_knn_k_must_outnumber_clustered_poisons():
    # Poisons crafted to collide with one target sit close together: with a small k they are each
    # other's neighbours and vote themselves clean; k = 2 x poisons outvotes them (Peri et al.).
    feats, labels, planted = colliding_poisons()
    rng = np.random.default_rng(1)
    feats[planted] = feats[PER_CLASS + 7] + 0.05 * torch.tensor(
        rng.standard_normal((N_POISON, DIM)), dtype=torch.float32
    )
    small = build({"type": "deep_knn", "k": 5}).sanitize(feats, labels, BUDGET)
    assert precision_recall(small["removed"], planted)[1] == 0.0
    auto = build({"type": "deep_knn"}).sanitize(feats, labels, BUDGET)
    precision, recall = precision_recall(auto["removed"], planted)
    assert precision >= 0.9 and recall >= 0.9


def test_deep_knn_relabel_mode():
    feats, labels, planted = colliding_poisons()
    removed = build({"type": "deep_knn"}).sanitize(feats, labels, BUDGET)["removed"]
    out = build({"type": "deep_knn", "mode": "relabel"}).sanitize(feats, labels, BUDGET)
    assert len(out["removed"]) == 0
    changed = torch.nonzero(out["labels"] != labels).flatten()
    assert torch.equal(changed, removed)  # the same samples, relabelled instead of removed
    assert (out["labels"][planted] == 1).float().mean() >= 0.9  # to their neighbours' class
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[changed] = False
    assert torch.equal(out["labels"][keep], labels[keep])


def test_deep_knn_excludes_the_sample_itself_even_with_duplicates():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 8))
    b = rng.standard_normal((20, 8)) + 20.0
    feats = torch.tensor(np.concatenate([a, b, a[:1]]), dtype=torch.float32)  # sample 40 duplicates 0
    labels = torch.tensor([0] * 20 + [1] * 20 + [1])
    out = build({"type": "deep_knn", "k": 1}).sanitize(feats, labels, 0)
    # each one's nearest other sample is its twin, of the other label
    assert out["removed"].tolist() == [0, 40]
    assert out["scores"][0] == 1.0 and out["scores"][40] == 1.0 and out["scores"][1] == 0.0


def test_deep_knn_queries_in_chunks(monkeypatch):
    feats, labels, _ = colliding_poisons()
    n = len(labels)
    monkeypatch.setattr(filters, "QUERY_CHUNK", 10**9)
    whole = build({"type": "deep_knn"}).sanitize(feats, labels, BUDGET)
    whole_relabel = build({"type": "deep_knn", "mode": "relabel"}).sanitize(feats, labels, BUDGET)

    rows = []
    original = NearestNeighbors.kneighbors

    def recording(self, X=None, *args, **kwargs):
        rows.append(n if X is None else len(X))
        return original(self, X, *args, **kwargs)

    monkeypatch.setattr(NearestNeighbors, "kneighbors", recording)
    monkeypatch.setattr(filters, "QUERY_CHUNK", 64)
    chunked = build({"type": "deep_knn"}).sanitize(feats, labels, BUDGET)
    assert rows and max(rows) <= 64
    assert len(rows) == -(-n // 64) and sum(rows) == n  # every row queried once
    chunked_relabel = build({"type": "deep_knn", "mode": "relabel"}).sanitize(feats, labels, BUDGET)
    for a, b in [(whole, chunked), (whole_relabel, chunked_relabel)]:
        assert torch.equal(a["removed"], b["removed"])
        assert torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["scores"], b["scores"])


def test_deep_knn_k_is_capped_and_explicit():
    filt = build({"type": "deep_knn", "k": 7})
    assert filt.resolve_k(100, 500) == 7
    assert filt.resolve_k(5, 0) == 4
    assert build({"type": "deep_knn"}).resolve_k(100, 0) == 1
    assert build({"type": "deep_knn", "k_factor": 3}).resolve_k(1000, 15) == 45
    assert build({"type": "deep_knn", "k_factor": 1.5}).resolve_k(1000, 3) == 4  # int(4.5), as forest


def test_deep_knn_majority_and_plurality_rules():
    """A sample whose own label is the most common among its 10 neighbours but held by only 4 of
    them: Geiping et al.'s majority rule removes it, Peri et al.'s plurality rule keeps it."""
    rng = np.random.default_rng(0)
    ring = rng.standard_normal((10, 4)) * 0.1
    far = rng.standard_normal((30, 4)) + 50.0
    feats = torch.tensor(np.concatenate([np.zeros((1, 4)), ring, far]), dtype=torch.float32)
    labels = torch.tensor([0] + [0] * 4 + [1] * 3 + [2] * 3 + [0] * 10 + [1] * 10 + [2] * 10)
    majority = build({"type": "deep_knn", "k": 10}).sanitize(feats, labels, 0)
    plurality = build({"type": "deep_knn", "k": 10, "rule": "plurality"}).sanitize(feats, labels, 0)
    assert 0 in majority["removed"].tolist() and 0 not in plurality["removed"].tolist()


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"type": "spectral_signatures", "multiplier": 0}, "multiplier"),
        ({"type": "spectral_signatures", "multiplier": -1.5}, "multiplier"),
        ({"type": "spectral_signatures", "expected_fraction": 0}, "expected_fraction"),
        ({"type": "spectral_signatures", "expected_fraction": 1.2}, "expected_fraction"),
        ({"type": "spectral_signatures", "budget": 3}, "budget"),
        ({"type": "activation_clustering", "size_threshold": 1.0}, "size_threshold"),
        ({"type": "activation_clustering", "size_threshold": 0}, "size_threshold"),
        ({"type": "activation_clustering", "reduction": "tsne"}, "reduction"),
        ({"type": "activation_clustering", "removal": "never"}, "removal"),
        ({"type": "activation_clustering", "n_components": 0}, "n_components"),
        ({"type": "deep_knn", "k": 0}, "k"),
        ({"type": "deep_knn", "k": 2.5}, "k"),
        ({"type": "deep_knn", "k": "many"}, "k"),
        ({"type": "deep_knn", "k": True}, "k"),
        ({"type": "deep_knn", "k_factor": 0}, "k_factor"),
        ({"type": "deep_knn", "mode": "flip"}, "mode"),
    ],
)
def test_bad_filter_entries_name_the_key(spec, key):
    anchored = (
        rf"^defenses\.d: unknown key\(s\) \['{key}'\]" if key == "budget" else rf"^defenses\.d\.{key}: .+ is invalid"
    )
    with pytest.raises(ConfigError, match=anchored):
        defenses.build(spec, C, name="d")
