"""The training comparison: our loop's images/s per defense against a reference loop written the
common way (a torchvision Dataset with per-sample ``transforms.v2`` and a DataLoader), same model,
data, batch size, defense and optimizer."""

from __future__ import annotations

import statistics
import time

import torch

from augdefense import data, defenses, models
from augdefense.training import Normalizer, Recipe, train

DEFENSES = {
    "none": {"type": "none"},
    "mixup k=2": {"type": "mixup", "k": 2, "alpha": 1.0},
    "mixup k=4": {"type": "mixup", "k": 4, "alpha": 1.0},
    "cutmix": {"type": "cutmix", "alpha": 1.0, "p": 0.5},
    "cutout": {"type": "cutout", "size": 8},
    "maxup (4 cutouts)": {"type": "maxup", "m": 4, "start_epoch": 0, "inner": {"type": "cutout", "size": 8}},
    "laplace s=8": {"type": "none", "laplace": 8},
    "dpsgd (batch)": {"type": "dpsgd_batch", "clip": 1.0, "noise": 1e-3},
    "dpsgd (opacus)": {"type": "dpsgd_opacus", "clip": 1.0, "noise_multiplier": 1.0},
}
# Per-sample DP-SGD cannot train BatchNorm: its row uses the GroupNorm variant of the model, both loops.
GROUP_NORM = {"dpsgd (opacus)"}
EPOCHS = 3  # per measurement, so each lasts seconds rather than a fraction of one


def _reference_loader(dataset: data.Dataset, n: int, recipe: Recipe, workers: int):
    """The common way: per-sample v2 transforms in a Dataset, batched by a DataLoader."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(dataset.image_shape[-1], padding=recipe.crop_pad)]
    if recipe.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToDtype(torch.float32, scale=True))
    transform = v2.Compose(steps)
    images, labels = dataset.train_images[:n], dataset.train_labels[:n]

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return transform(tv_tensors.Image(images[i])), labels[i]

    return torch.utils.data.DataLoader(Images(), batch_size=recipe.batch_size, shuffle=True, num_workers=workers)


def _reference_training(model, loader, defense, recipe, normalizer, n: int) -> None:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    trained, step_optimizer = defense.wrap_training(model, optimizer, n, recipe.batch_size)
    model.train()
    for epoch in range(recipe.epochs):
        for x, y in loader:
            loss = defense.loss(lambda batch: trained(normalizer(batch)), x.as_subclass(torch.Tensor), y, epoch)
            step_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            defense.process_gradients(model)
            step_optimizer.step()


def bench_training(
    dataset: data.Dataset, model_spec: dict, n: int, batch_size: int, repeats: int, workers: int, names: list[str]
) -> list[dict]:
    recipe = Recipe.from_spec(
        {"epochs": EPOCHS, "milestones": [], "batch_size": batch_size, "crop_pad": 2, "flip": True}
    )
    normalizer = Normalizer(dataset.mean, dataset.std)
    shape = dataset.image_shape
    rows = []
    for name in names:
        spec = DEFENSES[name]
        timings = {"ours": [], "reference": []}
        for repeat in range(repeats + 1):  # the first round warms up and is not counted
            for which in ("ours", "reference"):
                torch.manual_seed(repeat)
                spec_model = {**model_spec, "norm": "group", "groups": 8} if name in GROUP_NORM else model_spec
                model = models.build(spec_model, shape[0], dataset.num_classes, shape[-1])
                defense = defenses.build(spec, dataset.num_classes, name=name, seed=repeat, data_mean=dataset.mean)
                start = time.perf_counter()
                if which == "ours":
                    train(
                        model,
                        dataset.train_images[:n],
                        dataset.train_labels[:n],
                        defense,
                        recipe,
                        normalizer,
                        torch.device("cpu"),
                        seed=repeat,
                        amp=False,
                    )  # includes its per-epoch logging
                else:
                    _reference_training(
                        model, _reference_loader(dataset, n, recipe, workers), defense, recipe, normalizer, n
                    )
                if repeat:
                    timings[which].append(n * EPOCHS / (time.perf_counter() - start))
        ours, ref = statistics.median(timings["ours"]), statistics.median(timings["reference"])
        rows.append(
            {
                "defense": name,
                "ours_images_per_s": round(ours, 1),
                "reference_images_per_s": round(ref, 1),
                "ratio": round(ours / ref, 2),
                "repeats": repeats,
            }
        )
    return rows
