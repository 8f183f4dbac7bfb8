"""The papers' training recipe and one victim run (train under a defense, then evaluate).

Data stay on the training device as uint8; each batch is converted, cropped/flipped, passed
through the defense and normalised there, with no per-sample Python pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from augdefense import kernels, sources
from augdefense.errors import ArtifactError, ConfigError, TrainingError
from augdefense.io import load_tensors, save_tensors
from augdefense.params import OPTIONAL, Param, complete

log = logging.getLogger("augdefense.training")
# Steps between checks that the losses so far are finite: each check waits for the device, so not
# every step (the loss stays on the device in between); a divergence is still named by its step.
FINITE_CHECK_STEPS = 50

TRANSFER_PARAMS = {
    "pretrain_recipe": Param("string", "the recipe (without 'transfer') that pretrains the extractor"),
    "pretrain_data": Param(
        "object",
        "pretrain on this dataset's training set (the benchmark's: {source: cifar100}); absent: the offline "
        "fallback, pretrain_share of each class of the victim's own training set",
        default=OPTIONAL,
        fields=sources.DATA_PARAMS,
    ),
    "pretrain_share": Param(
        "number",
        "offline fallback (no pretrain_data): share of each class that pretrains the extractor; the rest is "
        "the fine-tuning pool, which holds the poisons",
        default=0.5,
        exclusive_minimum=0,
        exclusive_maximum=1,
    ),
    "finetune_size": Param(
        "integer",
        "fine-tune on the first finetune_size / classes images of each class of the pool, in dataset order "
        "(the benchmark's 2500); absent: the whole pool",
        default=OPTIONAL,
        minimum=1,
    ),
    "finetune": Param(
        "string",
        "fine-tune the last layer only or the whole network",
        default="last_layer",
        enum=("last_layer", "end_to_end"),
    ),
    # The benchmark normalises fine-tuning and crafting with fixed constants (learning_module.py,
    # data_mean_std_dict["cifar10"]), whose std is not CIFAR-10's; the data's own stay for the other tables.
    **sources.normalisation_params(
        "per-channel mean (in [0, 1] units, with std) that fine-tuning and crafting against the extractor "
        "normalise with (the benchmark's CIFAR-10 constants); absent: the data's",
        "per-channel std (in [0, 1] units, with mean) of that normalisation; absent: the data's",
    ),
}
RECIPE_PARAMS = {
    "epochs": Param("integer", "training epochs", minimum=1),
    "milestones": Param(
        "array", "epochs after which the learning rate is multiplied by gamma", items=Param("integer", minimum=1)
    ),
    "gamma": Param("number", "learning-rate factor at each milestone", default=0.1, exclusive_minimum=0, maximum=1),
    "lr": Param("number", "SGD learning rate", default=0.1, exclusive_minimum=0),
    "momentum": Param("number", "SGD momentum", default=0.9, minimum=0, exclusive_maximum=1),
    "nesterov": Param("boolean", "Nesterov momentum", default=True),
    "weight_decay": Param("number", "L2 weight decay", default=5e-4, minimum=0),
    "batch_size": Param("integer", "training batch size", default=128, minimum=1),
    "crop_pad": Param("integer", "random crop with this much zero padding (pixels)", default=4, minimum=0),
    "flip": Param("boolean", "random horizontal flips", default=True),
    "crop": Param(
        "string",
        "pad: crop_pad's padded random crop, batched on the training device (the papers' and forest's); "
        "random_resized: torchvision's RandomResizedCrop per image in the DataLoader workers (crop_pad unused)",
        default="pad",
        enum=("pad", "random_resized"),
    ),
    # Transfer learning (Schwarzschild et al.'s setting): the victim starts from a feature extractor
    # pretrained on a disjoint split and fine-tunes the last layer or end to end.
    "transfer": Param(
        "object",
        "transfer learning: fine-tune an extractor pretrained on a disjoint split",
        default=OPTIONAL,
        fields=TRANSFER_PARAMS,
    ),
}
RUNTIME_PARAMS = {
    "device": Param(
        "string",
        "a free GPU per job (file locks) when one exists, else the CPU",
        default="auto",
        enum=("auto", "cpu", "cuda"),
    ),
    "amp": Param(
        "boolean",
        "bf16 autocast on CUDA (an option: forest and the benchmark trained in fp32; its effect on the tables "
        "is not measured yet)",
        default=False,
    ),
    "deterministic": Param("boolean", "PyTorch's deterministic algorithms (slower on GPU)", default=False),
    "eval_batch_size": Param("integer", "batch size of evaluation and feature extraction", default=1024, minimum=1),
    "checkpoint_every": Param("integer", "epochs between resumable checkpoints", default=5, minimum=1),
    # Opt-in: compilation costs minutes up front and pays off on long GPU runs.
    "compile": Param("boolean", "torch.compile the training forward pass", default=False),
    "jobs_per_gpu": Param(
        "integer", "concurrent local jobs sharing one GPU (run with --resources gpu=GPUs x this)", default=1, minimum=1
    ),
    "loader_workers": Param(
        "integer",
        "DataLoader processes decoding streamed images (data.storage: stream) or applying per-image crops, "
        "besides the job's threads; 0: in the training process",
        default=4,
        minimum=0,
    ),
    "cpu_isa": Param(
        "string",
        "the CPU kernels' instruction set on x86-64 (augdefense.kernels): native, each library's best for this CPU "
        "(AVX-512 where there is one); avx2, capped at what every x86-64 CPU of the last decade has (slower on "
        "AVX-512, and two CPU vendors' numbers still differ: docs/reproducibility.md)",
        default=kernels.DEFAULT,
        enum=kernels.SETTINGS,
    ),
}


@dataclass(frozen=True)
class Recipe:
    epochs: int
    milestones: tuple
    gamma: float
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    batch_size: int
    crop_pad: int
    flip: bool
    crop: str
    transfer: dict | None = None

    @property
    def last_layer_only(self) -> bool:
        return bool(self.transfer) and self.transfer["finetune"] == "last_layer"

    @classmethod
    def from_spec(cls, spec: dict, where: str = "recipe") -> Recipe:
        spec = complete(spec, RECIPE_PARAMS, where)
        return cls(**{k: (tuple(v) if k == "milestones" else v) for k, v in spec.items()})


@dataclass(frozen=True)
class Runtime:
    device: str
    amp: bool
    deterministic: bool
    eval_batch_size: int
    checkpoint_every: int
    compile: bool
    jobs_per_gpu: int
    loader_workers: int
    cpu_isa: str

    @classmethod
    def from_spec(cls, spec: dict) -> Runtime:
        return cls(**complete(spec, RUNTIME_PARAMS, "runtime"))


def seed_everything(seed: int, deterministic: bool = False, warn_only: bool = False) -> None:
    """Seed torch and numpy; with ``deterministic``, PyTorch's deterministic algorithms (an op with
    none raises, or with ``warn_only`` warns and runs its usual kernel)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        torch.backends.cudnn.benchmark = False


class Normalizer(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.register_buffer("std", std.float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalizer_for(dataset, recipe: Recipe | None = None) -> Normalizer:
    """How a model trained (or fine-tuned) with ``recipe`` sees ``dataset``: the transfer entry's own
    ``mean``/``std`` when it gives them (the benchmark's constants), else the data's."""
    transfer = recipe.transfer if recipe is not None else None
    if not transfer or "mean" not in transfer:
        return Normalizer(dataset.mean, dataset.std)
    channels = len(dataset.mean)
    if len(transfer["mean"]) != channels or len(transfer.get("std", ())) != channels:
        raise ConfigError(
            f"recipe.transfer.mean, recipe.transfer.std: one value per channel of the {channels}-channel "
            f"images, got {len(transfer['mean'])} and {len(transfer.get('std', ()))}"
        )
    return Normalizer(torch.tensor(transfer["mean"]), torch.tensor(transfer["std"]))


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class Checkpointer:
    """Saves the whole training state every ``every`` epochs to a scratch file (not a workflow
    output), so a killed job resumes where it stopped and ends with the same numbers. The
    ``fingerprint`` names what the run depends on; a checkpoint of another run is ignored."""

    path: Path | None
    every: int = 5
    fingerprint: str = ""

    def load(self) -> dict | None:
        if self.path is None or not Path(self.path).exists():
            return None
        try:
            state = load_tensors(self.path, {"fingerprint": str, "epoch": int, "model": dict})
        except ArtifactError as exc:
            log.warning("ignoring checkpoint (%s); training from scratch", exc)
            return None
        if state["fingerprint"] != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to another run; training from scratch", self.path)
            return None
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return state

    def due(self, epoch: int, last: int) -> bool:
        return self.path is not None and epoch < last and epoch % self.every == 0

    def save(self, state: dict) -> None:
        save_tensors(self.path, {"fingerprint": self.fingerprint, **state})

    def clear(self) -> None:
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


def _indexed_on_device(images, recipe: Recipe) -> bool:
    """In-memory data with the batched crop: the set lives on the device and batches are indexed
    there; anything else goes through the DataLoader (``data.loader``)."""
    return isinstance(images, torch.Tensor) and recipe.crop == "pad"


def _epoch_batches(images, order: torch.Tensor, recipe: Recipe, device: torch.device, workers: int, seed: tuple):
    """One epoch's (indices, uint8 batch) in ``order``, both on the device: indexed from the
    in-memory tensor there, or decoded (streamed images) and cropped per image
    (``crop: random_resized``) by DataLoader workers."""
    from augdefense import augment, data

    index_batches, on_device = order.split(recipe.batch_size), order.to(device).split(recipe.batch_size)
    if _indexed_on_device(images, recipe):
        yield from ((idx, images[idx]) for idx in on_device)
        return
    transform = augment.random_resized_crop(images.shape[-1], recipe.flip) if recipe.crop == "random_resized" else None
    batches = data.loader(
        images, index_batches, workers=workers, transform=transform, seed=seed, pin=device.type == "cuda"
    )
    yield from ((idx, batch.to(device, non_blocking=True)) for idx, batch in zip(on_device, batches))


def train(
    model: torch.nn.Module,
    images,
    labels: torch.Tensor,
    defense,
    recipe: Recipe,
    normalizer: Normalizer,
    device: torch.device,
    seed: int,
    *,
    amp: bool = True,
    checkpointer: Checkpointer | None = None,
    compile_model: bool = False,
    loader_workers: int = 0,
) -> list[dict]:
    """Train ``model`` in place on uint8 ``images`` (a tensor, or streamed ``data.ImageFiles``);
    return one record per epoch."""
    model.to(device)
    normalizer.to(device)
    # channels-last: faster convolutions on GPUs (tensor cores) and on CPUs (oneDNN; ~15% per training here).
    model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    if _indexed_on_device(images, recipe):
        images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    state = _TrainingState.start(model, defense, recipe, seed, len(labels))
    # A defense may wrap both (per-sample DP-SGD); checkpoints keep the unwrapped ones' state.
    trained_model, step_optimizer = defense.wrap_training(model, state.optimizer, len(labels), recipe.batch_size)
    if compile_model:
        trained_model = torch.compile(trained_model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = normalizer(x).contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            return trained_model(x)

    checkpointer = checkpointer or Checkpointer(None)
    history, first_epoch = state.resume(checkpointer.load(), device)
    for epoch in _progress(first_epoch, recipe.epochs, f"train [{defense.describe()}]"):
        # Last-layer fine-tuning: the frozen extractor keeps its BatchNorm statistics (eval mode).
        model.train(not recipe.last_layer_only)
        order = torch.randperm(len(labels), generator=state.shuffle)
        start = time.perf_counter()
        losses = _NonFiniteWatch(epoch, defense)
        for step, (idx, batch) in enumerate(
            _epoch_batches(images, order, recipe, device, loader_workers, (seed, epoch))
        ):
            losses.append(_train_step(forward, model, step_optimizer, defense, recipe, batch, labels[idx], epoch))
            if (step + 1) % FINITE_CHECK_STEPS == 0:
                losses.check()
        state.scheduler.step()
        record = {
            "epoch": epoch + 1,
            "loss": losses.mean(),
            "lr": state.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        log.info("epoch %(epoch)d loss %(loss).4f lr %(lr).4g (%(seconds).1f s)", record)
        history.append(record)
        if checkpointer.due(epoch + 1, recipe.epochs):
            checkpointer.save(state.checkpoint(epoch + 1, history, device))
    return history


def _train_step(forward, model, step_optimizer, defense, recipe: Recipe, batch, labels, epoch: int) -> torch.Tensor:
    """One optimisation step on a uint8 batch; returns the loss, detached, where it was computed. Nothing
    here reads a value back to the host, so the host queues the next step while the device works."""
    from augdefense import augment

    x = batch.float().div_(255)
    if recipe.crop == "pad":
        x = augment.baseline(x, recipe.crop_pad, recipe.flip)
    loss = defense.loss(forward, x, labels, epoch)
    step_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    defense.process_gradients(model)
    step_optimizer.step()
    return loss.detach()


class _NonFiniteWatch:
    """An epoch's step losses, kept on the device; ``check`` (every FINITE_CHECK_STEPS steps and at the
    epoch's end) stops the run at the first non-finite one, naming its epoch, step and defense."""

    def __init__(self, epoch: int, defense) -> None:
        self.epoch, self.defense = epoch, defense
        self.losses: list[torch.Tensor] = []
        self.checked = 0

    def append(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def check(self) -> None:
        if self.checked == len(self.losses):
            return
        recent = torch.stack(self.losses[self.checked :])
        bad = torch.nonzero(~torch.isfinite(recent)).flatten().tolist()
        if bad:
            step = self.checked + bad[0]
            raise TrainingError(
                f"loss is {recent[bad[0]].item()} at epoch {self.epoch + 1}, step {step + 1} under defense "
                f"{self.defense.describe()}; no metrics were written"
            )
        self.checked = len(self.losses)

    def mean(self) -> float:
        """The epoch's mean loss (checked first), summed on the host in step order like a running total."""
        self.check()
        return sum(torch.stack(self.losses).tolist()) / len(self.losses)


@dataclass
class _TrainingState:
    """What a checkpoint saves and a resumed run restores: optimizer, learning-rate schedule, the
    random generators (torch's on the CPU and the device, the shuffle's, the defense's) and the
    model's weights."""

    model: torch.nn.Module
    defense: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator

    @classmethod
    def start(cls, model, defense, recipe: Recipe, seed: int, n: int) -> _TrainingState:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
        return cls(model, defense, optimizer, scheduler, torch.Generator().manual_seed(seed))

    def resume(self, saved: dict | None, device: torch.device) -> tuple[list[dict], int]:
        """Restore a checkpoint's state; the history so far and the first epoch to run."""
        if saved is None:
            return [], 0
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in saved:
            torch.cuda.set_rng_state(saved["rng_cuda"], device)
        self.shuffle.set_state(saved["rng_shuffle"])
        for generator, state in zip(self.defense.generators(), json.loads(saved["rng_defense"])):
            generator.bit_generator.state = state
        return list(saved["history"]), saved["epoch"]

    def checkpoint(self, epoch: int, history: list[dict], device: torch.device) -> dict:
        return {
            "epoch": epoch,
            "history": history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_shuffle": self.shuffle.get_state(),
            "rng_defense": json.dumps([g.bit_generator.state for g in self.defense.generators()]),
            **({"rng_cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
        }


def _progress(first: int, last: int, desc: str):
    """Epochs ``first`` to ``last`` - 1, with tqdm's progress bar where tqdm is installed (a bare GPU
    node may lack it: then plain)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return range(first, last)
    return tqdm(range(first, last), desc=desc, mininterval=10, initial=first, total=last)


def start_from_extractor(model: torch.nn.Module, state: dict, last_layer_only: bool) -> None:
    """Load a pretrained extractor into ``model``, re-initialise the classifier head for the
    fine-tuning set, and freeze everything else when only the last layer is fine-tuned."""
    from augdefense.models import classifier_head

    model.load_state_dict(state)
    head = classifier_head(model)
    head.reset_parameters()
    if last_layer_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    images,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
    *,
    workers: int = 0,
) -> torch.Tensor:
    """Softmax probabilities [N, classes] for uint8 ``images`` (no augmentation; streamed images
    decoded by ``workers``)."""
    from augdefense.data import batches

    model.eval().to(device)
    normalizer.to(device)
    out = []
    for batch in batches(images, batch_size, workers=workers):
        x = normalizer(batch.to(device).float().div_(255))
        with _autocast(device, amp):
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
