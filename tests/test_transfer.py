"""The transfer-learning setting (Tables 4 and 6): disjoint splits, a frozen extractor, and poisons
that live in the fine-tuning split."""

import torch

from augdefense import data, defenses
from augdefense.jobs.craft import craft_poison
from augdefense.jobs.train import TrainingJob, pretrain_extractor, train_victim
from augdefense.models import build as build_model
from augdefense.models import classifier_head
from augdefense.models import load as load_model
from augdefense.training import Normalizer, Recipe, start_from_extractor, train

TRANSFER = {"pretrain_recipe": "pretrain", "pretrain_share": 0.5, "finetune": "last_layer"}
MODEL = {"arch": "convnet", "width": 8}
RUNTIME = {"device": "cpu", "amp": False}
SHORT = {"epochs": 1, "milestones": [], "crop_pad": 1, "flip": False}


def _pretrain(data_path, pretraining: dict, out) -> dict:
    """A one-epoch extractor on ``data_path`` (``pretrain_extractor``), read back."""
    job = TrainingJob(data=data_path, recipe=SHORT, model=MODEL, runtime=RUNTIME, seed=0)
    pretrain_extractor(job, pretraining=pretraining, out=out)
    return torch.load(out, weights_only=True)


def _craft_feature_collision(data_path, extractor, recipe, out) -> dict:
    """Four Poison Frogs poisons of seed 0 against ``extractor``, read back."""
    attack = {"type": "feature_collision", "recipe": "transfer", "eps": 8, "n_poisons": 4, "iterations": 3}
    craft_poison(
        data=data_path,
        attack_name="fc",
        attack=attack,
        seed=0,
        out=out,
        crafting_model=extractor,
        recipe=recipe,
        runtime=RUNTIME,
    )
    return torch.load(out, weights_only=True)


def test_split_is_disjoint_complete_stratified_and_fixed(digits8):
    labels = digits8.train_labels
    pretrain, finetune = data.transfer_split(labels, {"pretrain_share": 0.3})
    assert len(set(pretrain.tolist()) & set(finetune.tolist())) == 0
    assert sorted(pretrain.tolist() + finetune.tolist()) == list(range(len(labels)))
    for c in range(10):
        share = (labels[pretrain] == c).sum() / (labels == c).sum()
        assert abs(float(share) - 0.3) < 0.02
    assert torch.equal(data.transfer_split(labels, {"pretrain_share": 0.3})[0], pretrain)


def test_last_layer_finetuning_changes_only_the_head(digits8):
    torch.manual_seed(0)
    model = build_model(MODEL, 1, 10, 8)
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    start_from_extractor(model, pretrained, last_layer_only=True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["linear.weight", "linear.bias"]
    recipe = Recipe.from_spec(
        {"epochs": 2, "milestones": [], "crop_pad": 1, "flip": False, "lr": 0.05, "transfer": TRANSFER}
    )
    train(
        model,
        digits8.train_images[:256],
        digits8.train_labels[:256],
        defenses.build({"type": "mixup"}, 10),
        recipe,
        Normalizer(digits8.mean, digits8.std),
        torch.device("cpu"),
        seed=0,
        amp=False,
    )
    after = model.state_dict()
    head = {"linear.weight", "linear.bias"}
    # The frozen extractor, BatchNorm running statistics included, is untouched; the head learned.
    assert all(torch.equal(after[k], v) for k, v in pretrained.items() if k not in head)
    assert not torch.equal(after["linear.weight"], pretrained["linear.weight"])
    assert classifier_head(model) is model.linear


def test_transfer_poisons_live_in_the_finetuning_split_and_the_victim_trains_there(digits8, tmp_path):
    data_path, extractor = tmp_path / "digits.pt", tmp_path / "extractor.pt"
    data.prepare(spec={"source": "digits"}, out=data_path)
    saved = _pretrain(data_path, {"pretrain_share": TRANSFER["pretrain_share"]}, extractor)
    recipe = {**SHORT, "transfer": TRANSFER}
    poison_path = tmp_path / "fc.pt"
    poison = _craft_feature_collision(data_path, extractor, recipe, poison_path)
    pretrain, finetune = data.transfer_split(digits8.train_labels, TRANSFER)
    assert torch.equal(poison["train_subset"], finetune)
    assert set(poison["train_indices"].tolist()) <= set(finetune.tolist())
    assert torch.equal(poison["train_labels"], digits8.train_labels[poison["train_indices"]])
    record = train_victim(
        TrainingJob(
            data=data_path, poison=poison_path, extractor=extractor, recipe=recipe, model=MODEL, runtime=RUNTIME, seed=0
        ),
        attack="fc",
        out=tmp_path / "run.json",
    )
    assert record["n_poisons"] == 4 and 0 <= record["clean_acc"] <= 1
    assert torch.equal(saved["pretrain_indices"], pretrain)


def test_split_sizes_are_exact(digits8):
    """Per class, round(share x class size) images pretrain (Python's round: half to even) and the
    rest fine-tune; on digits' 1437 training images at share 0.5 that is 718 and 719."""
    from augdefense import sources

    labels = digits8.train_labels
    sizes = torch.bincount(labels).tolist()
    assert sizes == [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]
    pretrain, finetune = data.transfer_split(labels, TRANSFER)
    per_class = [int((labels[pretrain] == c).sum()) for c in range(10)]
    assert per_class == [sources.pretrain_count(n, 0.5) for n in sizes] == [71, 73, 71, 73, 72, 72, 72, 72, 70, 72]
    assert (len(pretrain), len(finetune)) == (718, 719)


def test_a_transfer_victim_trains_on_the_finetuning_split_only_and_finds_its_poisons(digits8, tmp_path):
    """The training set of a transfer poison is the fine-tuning split with the poisons in place, and
    the filters' position mapping points at the poisons themselves."""
    from augdefense import poisons

    _, finetune = data.transfer_split(digits8.train_labels, TRANSFER)
    chosen = finetune[torch.tensor([3, 50, 400])]
    artifact = {
        **poisons.none(digits8.image_shape),
        "train_indices": chosen,
        "train_images": torch.full((3, *digits8.image_shape), 7, dtype=torch.uint8),
        "train_labels": digits8.train_labels[chosen],
        "train_subset": finetune,
    }
    images, labels = poisons.training_set(digits8, artifact)
    assert len(images) == len(finetune) == 719
    clean = digits8.train_images[finetune]
    changed = torch.nonzero((images != clean).flatten(1).any(1)).flatten()
    positions = poisons.positions_in_training_set(artifact)
    assert positions.tolist() == [3, 50, 400] and set(changed.tolist()) <= set(positions.tolist())
    assert torch.equal(images[positions], artifact["train_images"])
    assert torch.equal(labels, digits8.train_labels[finetune])


def test_finetune_size_keeps_the_first_images_of_each_class_in_dataset_order(digits8):
    """learning_module.PoisonedDataset.find_indices: the first finetune_size / classes images of
    each class (after the pretraining split, or of the whole set when pretraining elsewhere)."""
    labels = digits8.train_labels
    _, pool = data.transfer_split(labels, TRANSFER)
    _, capped = data.transfer_split(labels, {**TRANSFER, "finetune_size": 250})
    assert len(capped) == 250
    for c in range(10):
        assert capped[labels[capped] == c].tolist() == pool[labels[pool] == c][:25].tolist()
    pretrain, whole = data.transfer_split(labels, {"pretrain_data": {"source": "cifar100"}, "finetune_size": 100})
    assert len(pretrain) == 0
    for c in range(10):
        assert whole[labels[whole] == c].tolist() == torch.nonzero(labels == c).flatten()[:10].tolist()


def _five_class_digits(path, digits8):
    """A prepared dataset with other classes than the victim's: digits 0-4 only."""
    from augdefense.io import save_tensors

    keep, test_keep = digits8.train_labels < 5, digits8.test_labels < 5
    save_tensors(
        path,
        {
            **digits8.to_dict(),
            "train_images": digits8.train_images[keep],
            "train_labels": digits8.train_labels[keep],
            "test_images": digits8.test_images[test_keep],
            "test_labels": digits8.test_labels[test_keep],
            "classes": digits8.classes[:5],
        },
    )


def test_an_extractor_pretrained_on_other_classes_fine_tunes_and_crafts(digits8, tmp_path):
    """The benchmark's setting: the extractor pretrains on another dataset (CIFAR-100 there; five
    digit classes here), whose head does not fit the victim's classes: the head is re-initialised,
    every other weight comes from the extractor, and the poisons live in the first images per class."""
    data_path, other, extractor = tmp_path / "digits.pt", tmp_path / "five.pt", tmp_path / "extractor.pt"
    data.prepare(spec={"source": "digits"}, out=data_path)
    _five_class_digits(other, digits8)
    saved = _pretrain(other, {"pretrain_data": {"source": "digits"}}, extractor)
    assert saved["state_dict"]["linear.weight"].shape[0] == 5
    assert len(saved["pretrain_indices"]) == int((digits8.train_labels < 5).sum())
    transfer = {
        "pretrain_recipe": "pretrain",
        "pretrain_data": {"source": "digits"},
        "finetune_size": 200,
        "finetune": "last_layer",
    }
    recipe = {**SHORT, "transfer": transfer}
    poison_path = tmp_path / "fc.pt"
    poison = _craft_feature_collision(data_path, extractor, recipe, poison_path)
    _, finetune = data.transfer_split(digits8.train_labels, transfer)
    assert len(finetune) == 200 and torch.equal(poison["train_subset"], finetune)
    assert set(poison["train_indices"].tolist()) <= set(finetune.tolist())
    job = TrainingJob(
        data=data_path, poison=poison_path, extractor=extractor, recipe=recipe, model=MODEL, runtime=RUNTIME, seed=0
    )
    record = train_victim(job, attack="fc", out=tmp_path / "run.json")
    assert record["n_train"] == 200 and 0 <= record["clean_acc"] <= 1
    loaded = load_model(extractor, digits8, head_may_differ=True).state_dict()
    assert loaded["linear.weight"].shape[0] == 10
    assert all(torch.equal(loaded[k], v) for k, v in saved["state_dict"].items() if not k.startswith("linear."))


def test_normalizer_for_uses_the_transfer_entrys_constants_else_the_datas(digits8):
    import pytest

    from augdefense.errors import ConfigError
    from augdefense.training import normalizer_for

    plain = normalizer_for(digits8, Recipe.from_spec(SHORT))
    assert torch.equal(plain.std.flatten(), digits8.std.float()) and torch.equal(plain.mean.flatten(), digits8.mean)
    assert torch.equal(normalizer_for(digits8).std, plain.std)
    own = normalizer_for(digits8, Recipe.from_spec({**SHORT, "transfer": {**TRANSFER, "mean": [0.3], "std": [0.2]}}))
    assert own.mean.flatten().tolist() == pytest.approx([0.3]) and own.std.flatten().tolist() == pytest.approx([0.2])
    three = Recipe.from_spec({**SHORT, "transfer": {**TRANSFER, "mean": [0.4914, 0.4822, 0.4465], "std": [0.2] * 3}})
    with pytest.raises(ConfigError, match=r"recipe\.transfer\.mean.*1-channel"):
        normalizer_for(digits8, three)


def test_the_transfer_setting_fine_tunes_crafts_and_filters_with_its_own_normalisation(digits8, tmp_path, monkeypatch):
    """The benchmark fixes CIFAR-10's mean and std (learning_module.data_mean_std_dict) for fine-tuning
    and for crafting against the extractor; the pretraining and a CLBD crafting model trained with
    a crafting_recipe keep the data's (the normalisation they were trained with)."""
    from augdefense import training
    from augdefense.jobs.sanitize import sanitize

    data_path, extractor = tmp_path / "digits.pt", tmp_path / "extractor.pt"
    data.prepare(spec={"source": "digits"}, out=data_path)
    _pretrain(data_path, {"pretrain_share": TRANSFER["pretrain_share"]}, extractor)
    recipe = {**SHORT, "transfer": {**TRANSFER, "mean": [0.3], "std": [0.2]}}
    used = []
    real_for, real_train = training.normalizer_for, training.train

    def spy_for(dataset, recipe=None):
        normalizer = real_for(dataset, recipe)
        used.append(round(float(normalizer.std.flatten()[0]), 4))
        return normalizer

    def spy_train(model, images, labels, defense, recipe_, normalizer, *args, **kwargs):
        used.append(("train", round(float(normalizer.std.flatten()[0]), 4)))
        return real_train(model, images, labels, defense, recipe_, normalizer, *args, **kwargs)

    monkeypatch.setattr(training, "normalizer_for", spy_for)
    monkeypatch.setattr(training, "train", spy_train)
    data_std = round(float(digits8.std[0]), 4)

    poison_path = tmp_path / "fc.pt"
    _craft_feature_collision(data_path, extractor, recipe, poison_path)
    assert used == [0.2]  # crafting against the extractor: the transfer constants
    used.clear()
    job = TrainingJob(
        data=data_path, poison=poison_path, extractor=extractor, recipe=recipe, model=MODEL, runtime=RUNTIME, seed=0
    )
    train_victim(job, attack="fc", out=tmp_path / "run.json")
    assert ("train", 0.2) in used  # fine-tuning
    used.clear()
    sanitize(
        data=data_path,
        poison=poison_path,
        feature_model=extractor,
        attack={"type": "feature_collision", "recipe": "transfer", "n_poisons": 4},
        defense_name="ss",
        defense={"type": "spectral_signatures"},
        runtime=RUNTIME,
        seed=0,
        out=tmp_path / "ss.json",
        recipe=recipe,
    )
    assert used == [0.2]  # the filters' features: as the feature model was fine-tuned
    used.clear()
    clbd = {"type": "clean_label_backdoor", "recipe": "transfer", "n_poisons": 4, "patch_size": 2, "steps": 1}
    craft_poison(
        data=data_path,
        attack_name="clbd",
        attack={**clbd, "crafting_recipe": "targeted"},
        seed=0,
        out=tmp_path / "clbd.pt",
        crafting_model=extractor,
        recipe=recipe,
        runtime=RUNTIME,
    )
    assert used == [data_std]  # a crafting_recipe's model: the data's normalisation it was trained with
    used.clear()
    _pretrain(data_path, {"pretrain_share": TRANSFER["pretrain_share"]}, tmp_path / "again.pt")
    assert ("train", data_std) in used  # pretraining (a recipe without transfer): the data's
