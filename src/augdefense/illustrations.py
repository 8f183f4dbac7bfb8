"""The augmentation illustrations (DP-InstaHide's Figures 1 and 3): a poison and what the run's own
mixing defenses make of it, each panel labelled from the defense's config entry. Torch-free at
import (the workflow imports it to pick the defenses a rule passes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The illustrations' mixing panels, in the papers' order (DP-InstaHide Figures 1 and 3).
ILLUSTRATED = ("mixup", "CutMix", "DP-InstaHide")
# Draws of a panel's mix before the last one is shown as it is (its label gives its weights).
MAX_DRAWS = 1000


def illustration_role(entry: dict) -> str | None:
    """The illustration panel a defense entry can fill: mixup (k >= 2, no noise), CutMix (no noise)
    or DP-InstaHide (k-way mixup with Laplacian noise); None for every other defense."""
    noise = float(entry.get("laplace", 0) or 0)
    if entry["type"] == "mixup" and entry.get("k", 2) >= 2:
        return "DP-InstaHide" if noise > 0 else "mixup"
    if entry["type"] == "cutmix" and noise == 0:
        return "CutMix"
    return None


def illustrated_defenses(experiments: dict, defenses: dict) -> dict:
    """The defenses the illustrations show: for each panel, the first defense the experiments run
    (in config order) that can fill it; a panel no defense of the run fills is left out. The rule
    passes only these entries, so editing another defense does not redraw the illustrations."""
    chosen: dict[str, str] = {}
    for experiment in experiments.values():
        for name in experiment["defenses"]:
            role = illustration_role(defenses[name])
            if role is not None and role not in chosen:
                chosen[role] = name
    return {chosen[role]: defenses[chosen[role]] for role in ILLUSTRATED if role in chosen}


def panel_title(role: str, name: str, entry: dict) -> str:
    """A mixing panel's title, from the defense's own config entry."""
    noise = f", s={entry['laplace']:g}/255" if float(entry.get("laplace", 0) or 0) > 0 else ""
    if entry["type"] == "mixup":
        weights = "equal" if entry.get("weights") == "equal" else f"Dirichlet α={entry.get('alpha', 1.0):g}"
        detail = f"k={entry.get('k', 2)}, {weights}{noise}"
    else:
        detail = f"α={entry.get('alpha', 1.0):g}, p={entry.get('p', 0.5):g}{noise}"
    return f"{role} '{name}'\n({detail})"


def _visible_mix(soft, own: int, width: int, sources: int) -> bool:
    """Whether a mixed image's label shows a mix one can see: the poison's share within
    [0.6/width, 1 - 0.6/width] ([0.3, 0.7] for two images) and ``sources`` distinct images in it
    (every image of the illustration's batch has its own class, so the label names them)."""
    share = float(soft[own])
    return 0.6 / width <= share <= 1 - 0.6 / width and int((soft > 1e-6).sum()) == sources


@dataclass
class Panel:
    title: str
    image: object  # [C, H, W] tensor in [0, 1] units (a noised one may leave that range)
    soft_label: object = None  # [num_classes] tensor, for a mixed image


def render_illustrations(
    *, data: str | Path, poison: str | Path, defenses: dict, png: str | Path, pdf: str | Path
) -> list[Panel]:
    """As the papers' Figures 1 and 3: a training image, its poisoned version, and that poison after
    the run's own mixing defenses (``defenses``: the entries ``illustrated_defenses`` picked),
    through the project's defense implementations. Each mix is drawn again (the defense's own
    generators, then torch's, reseeded per draw) until it is visible (``_visible_mix``): a mix of
    the poison with itself, or with 97% of its weight, shows nothing. Returns the panels (their
    titles are also logged); every title states the defense's name and parameters and each label
    in the mix with its weight."""
    import torch

    from augdefense import data as datasets
    from augdefense import defenses as registry
    from augdefense import poisons
    from augdefense.figures import pyplot, save

    plt = pyplot()
    dataset = datasets.load(data)
    poison = poisons.load(poison, dataset.image_shape, len(dataset.train_labels), dataset.num_classes)
    attack = poison["info"].get("attack", "poison")
    if len(poison["train_indices"]):
        index = int(poison["train_indices"][0])
        poisoned, label = poison["train_images"][0], int(poison["train_labels"][0])
        clean, poisoned_name = dataset.train_images[index], f"poisoned ({attack})"
    else:  # a clean control poisons nothing: show a patched test image instead
        poisoned, label = poison["eval_images"][0], int(poison["eval_labels"][0])
        clean, poisoned_name = dataset.test_images[0], f"test input ({attack})"
    # One training image of every other class: a mixed label then tells which images went into the mix.
    others = [int(torch.nonzero(dataset.train_labels == c).flatten()[0]) for c in range(dataset.num_classes)]
    others = [i for c, i in enumerate(others) if c != label]
    batch = torch.cat([poisoned[None], dataset.train_images[torch.tensor(others)]]).float() / 255
    y = torch.cat([torch.tensor([label]), dataset.train_labels[torch.tensor(others)]])
    panels = [Panel(f"clean\nlabel {dataset.classes[label]}", clean.float() / 255)]
    panels.append(Panel(f"{poisoned_name}\nlabel {dataset.classes[label]}", poisoned.float() / 255))
    roles = {illustration_role(entry): name for name, entry in defenses.items()}
    for role in [r for r in ILLUSTRATED if r in roles]:
        name = roles[role]
        entry = defenses[name]
        width = entry.get("k", 2) if entry["type"] == "mixup" else 2
        defense = registry.build(entry, dataset.num_classes, name=name, seed=0)
        with torch.random.fork_rng():
            for draw in range(MAX_DRAWS):
                torch.manual_seed(draw)
                mixed, soft = defense.transform(batch, y, 0)
                if _visible_mix(soft[0], label, width, min(width, len(batch))):
                    break
        title = panel_title(role, name, entry) + "\n" + _mixed_labels(soft[0], dataset.classes)
        panels.append(Panel(title, mixed[0], soft[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        picture = panel.image.clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(
            picture.squeeze(-1) if picture.shape[-1] == 1 else picture,
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_title(panel.title, fontsize=7)
        ax.axis("off")
        log.info("panel: %s", panel.title.replace("\n", " | "))
    save(fig, png, pdf)
    return panels


def _mixed_labels(soft, classes: list[str], per_line: int = 2) -> str:
    """Every class in a mixed label with its weight, largest first, ``per_line`` to a line."""
    order = sorted(((float(w), int(c)) for c, w in enumerate(soft) if w > 1e-6), reverse=True)
    parts = [f"{classes[c]}:{w:.2f}" for w, c in order]
    return "\n".join(", ".join(parts[i : i + per_line]) for i in range(0, len(parts), per_line))
