"""The transfer-learning setting (Tables 4 and 6): disjoint splits, a frozen extractor, and poisons
that live in the fine-tuning split."""

import torch

from augdefense import data, defenses
from augdefense.jobs.craft import craft_poison
from augdefense.jobs.train import TrainingJob, pretrain_extractor, train_victim
from augdefense.models import build as build_model
from augdefense.training import Normalizer, Recipe, classifier_head, start_from_extractor, train

TRANSFER = {"pretrain_recipe": "pretrain", "pretrain_share": 0.5, "finetune": "last_layer"}


def test_split_is_disjoint_complete_stratified_and_fixed(digits8):
    labels = digits8.train_labels
    pretrain, finetune = data.transfer_split(labels, 0.3)
    assert len(set(pretrain.tolist()) & set(finetune.tolist())) == 0
    assert sorted(pretrain.tolist() + finetune.tolist()) == list(range(len(labels)))
    for c in range(10):
        share = (labels[pretrain] == c).sum() / (labels == c).sum()
        assert abs(float(share) - 0.3) < 0.02
    assert torch.equal(data.transfer_split(labels, 0.3)[0], pretrain)


def test_last_layer_finetuning_changes_only_the_head(digits8):
    torch.manual_seed(0)
    model = build_model({"arch": "convnet", "width": 8}, 1, 10, 8)
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
    data_path = tmp_path / "digits.pt"
    data.prepare(spec={"source": "digits"}, out=data_path)
    model = {"arch": "convnet", "width": 8}
    runtime = {"device": "cpu", "amp": False}
    short = {"epochs": 1, "milestones": [], "crop_pad": 1, "flip": False}
    extractor = tmp_path / "extractor.pt"
    pretrain_extractor(
        TrainingJob(data=data_path, recipe=short, model=model, runtime=runtime, seed=0),
        pretrain_share=TRANSFER["pretrain_share"],
        out=extractor,
    )
    recipe = {**short, "transfer": TRANSFER}
    poison_path = tmp_path / "fc.pt"
    attack = {"type": "feature_collision", "recipe": "transfer", "eps": 8, "n_poisons": 4, "iterations": 3}
    craft_poison(
        data=data_path,
        attack_name="fc",
        attack=attack,
        seed=0,
        out=poison_path,
        crafting_model=extractor,
        recipe=recipe,
        runtime=runtime,
    )
    poison = torch.load(poison_path, weights_only=True)
    pretrain, finetune = data.transfer_split(digits8.train_labels, 0.5)
    assert torch.equal(poison["train_subset"], finetune)
    assert set(poison["train_indices"].tolist()) <= set(finetune.tolist())
    assert torch.equal(poison["train_labels"], digits8.train_labels[poison["train_indices"]])
    record = train_victim(
        TrainingJob(
            data=data_path, poison=poison_path, extractor=extractor, recipe=recipe, model=model, runtime=runtime, seed=0
        ),
        attack="fc",
        out=tmp_path / "run.json",
    )
    assert record["n_poisons"] == 4 and 0 <= record["clean_acc"] <= 1
    saved = torch.load(extractor, weights_only=True)
    assert torch.equal(saved["pretrain_indices"], pretrain)


def test_split_sizes_are_exact(digits8):
    """Per class, round(share x class size) images pretrain (Python's round: half to even) and the
    rest fine-tune; on digits' 1437 training images at share 0.5 that is 718 and 719."""
    from augdefense import sources

    labels = digits8.train_labels
    sizes = torch.bincount(labels).tolist()
    assert sizes == [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]
    pretrain, finetune = data.transfer_split(labels, 0.5)
    per_class = [int((labels[pretrain] == c).sum()) for c in range(10)]
    assert per_class == [sources.pretrain_count(n, 0.5) for n in sizes] == [71, 73, 71, 73, 72, 72, 72, 72, 70, 72]
    assert (len(pretrain), len(finetune)) == (718, 719)


def test_a_transfer_victim_trains_on_the_finetuning_split_only_and_finds_its_poisons(digits8, tmp_path):
    """The training set of a transfer poison is the fine-tuning split with the poisons in place, and
    the filters' position mapping points at the poisons themselves."""
    from augdefense import poisons

    _, finetune = data.transfer_split(digits8.train_labels, 0.5)
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
