"""Train the default zoo: ``python -m zoo.train`` (seeded, reproducible on one machine).

Every variant is trained with the BranchyNet joint loss (a weighted sum of the cross
entropies of all exits), so early exits are real classifiers, not afterthoughts. Width
variants are trained from scratch; the pruned variant starts from the trained width-1.0
model, loses channels (``zoo.pruning``) and is fine-tuned.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as functional
from torch import nn

from zoo.dataset import HELD_OUT_FRACTION, SPLIT_SEED, digits_split, resize_for
from zoo.export import add_to_manifest, export_variant
from zoo.family import Family, get_family
from zoo.manifest import DEFAULT_ZOO_DIR, HeldOutInfo, VariantInfo
from zoo.pruning import prune_blocks

SEED = 7


@dataclass(frozen=True)
class TrainingRecipe:
    family: str
    widths: tuple[float, ...]
    epochs: dict[float, int]
    pruned_keep_fraction: float
    pruned_epochs: int
    learning_rate: float = 3e-3
    batch_size: int = 64
    shift_pixels: int = 1


RECIPES = {
    "digits-cnn": TrainingRecipe("digits-cnn", (1.0, 0.5, 0.25), {1.0: 40, 0.5: 40, 0.25: 40},
                                 pruned_keep_fraction=0.5, pruned_epochs=10, shift_pixels=1),
    "digits-resnet": TrainingRecipe("digits-resnet", (1.0, 0.5, 0.25), {1.0: 4, 0.5: 5, 0.25: 6},
                                    pruned_keep_fraction=0.4, pruned_epochs=2, shift_pixels=4),
}


def width_name(family: str, width: float) -> str:
    return f"{family}-w{width:g}"


def pruned_name(family: str, keep_fraction: float) -> str:
    return f"{family}-p{keep_fraction:g}"


def exit_weights(exits: list[int]) -> dict[int, float]:
    """BranchyNet-style: later exits weigh more, the final exit most."""
    return {block: 0.5 + 0.5 * (position + 1) / len(exits) for position, block in enumerate(exits)}


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate the batch by up to ``pixels`` (zero fill): cheap augmentation."""
    if pixels == 0:
        return images
    padded = functional.pad(images, (pixels, pixels, pixels, pixels))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pixels + 1, (2,), generator=generator))
    return padded[..., dy:dy + images.shape[-2], dx:dx + images.shape[-1]]


def train_blocks(blocks: list[nn.Module], heads: dict[int, nn.Module], images: torch.Tensor,
                 labels: torch.Tensor, epochs: int, recipe: TrainingRecipe, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    parameters = [p for module in [*blocks, *heads.values()] for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=1e-4)
    steps = epochs * math.ceil(len(images) / recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=steps)
    weights = exit_weights(sorted(heads))
    for module in [*blocks, *heads.values()]:
        module.train()
    for _epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), recipe.batch_size):
            index = order[start:start + recipe.batch_size]
            hidden = random_shift(images[index], recipe.shift_pixels, generator)
            target = labels[index]
            loss = torch.zeros(())
            for block_index, block in enumerate(blocks):
                hidden = block(hidden)
                if block_index in heads:
                    loss = loss + weights[block_index] * functional.cross_entropy(heads[block_index](hidden),
                                                                                  target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


def build(family: Family, config: dict) -> tuple[list[nn.Module], dict[int, nn.Module]]:
    blocks = [family.build_block(config, index) for index in range(family.block_count(config))]
    heads = {index: family.build_head(config, index) for index in family.exits(config)}
    return blocks, heads


def _load_trained(family: Family, name: str, zoo_dir: Path) -> tuple[list[nn.Module], dict[int, nn.Module], dict]:
    from zoo.model_slice import load_slice

    model = load_slice(name, zoo_dir=zoo_dir)
    blocks = [model.blocks[index] for index in range(model.variant.block_count)]
    return blocks, dict(model.heads), dict(model.variant.config)


@contextlib.contextmanager
def _threads_for(config: dict):
    """One intra-op thread for very narrow networks: oneDNN's two-thread backward pass
    crashed (SIGSEGV, every run) on the 10-channel digits-resnet-w0.25 here; one thread
    trains it without trouble and a narrow net gains little from a second thread anyway."""
    previous = torch.get_num_threads()
    if min(config.get("channels", [64])) < 16:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def held_out_info() -> HeldOutInfo:
    return HeldOutInfo(seed=SPLIT_SEED, fraction=HELD_OUT_FRACTION, size=len(digits_split().held_out_labels))


def train_family(recipe: TrainingRecipe, zoo_dir: Path, seed: int, log=print,
                 only: set[str] | None = None) -> list[VariantInfo]:
    """Train and export every variant of a family (or those named in ``only``); the manifest
    is updated after each one, so an interrupted run keeps what it finished."""
    family = get_family(recipe.family)
    split = digits_split()
    train_images = resize_for(family.input_shape, split.train_images)
    held_images = resize_for(family.input_shape, split.held_out_images)
    variants: list[VariantInfo] = []
    full_width: tuple[list[nn.Module], dict[int, nn.Module], dict] | None = None
    for width in recipe.widths:
        if only is not None and width_name(family.name, width) not in only:
            continue
        torch.manual_seed(seed)
        config = family.width_config(width)
        blocks, heads = build(family, config)
        started = time.perf_counter()
        with _threads_for(config):
            train_blocks(blocks, heads, train_images, split.train_labels, recipe.epochs[width], recipe, seed)
        seconds = time.perf_counter() - started
        info = export_variant(zoo_dir, family, width_name(family.name, width), config, blocks, heads,
                              held_images, split.held_out_labels,
                              training={"epochs": recipe.epochs[width], "seed": seed,
                                        "seconds": round(seconds, 1)})
        log(f"{info.name}: {seconds:.1f}s, exits {[e.accuracy for e in info.exits]}")
        variants.append(info)
        add_to_manifest(zoo_dir, [info], held_out_info(), {family.name: family.description})
        if width == 1.0:
            full_width = (blocks, heads, config)
    pruned = pruned_name(family.name, recipe.pruned_keep_fraction)
    if full_width is None and (only is None or pruned in only):
        full_width = _load_trained(family, width_name(family.name, 1.0), zoo_dir)
    if full_width is not None and (only is None or pruned in only):
        blocks, heads, config = full_width
        pruned_blocks, pruned_config = prune_blocks(blocks, config, recipe.pruned_keep_fraction)
        pruned_heads = {index: head for index, head in heads.items()}
        started = time.perf_counter()
        train_blocks(pruned_blocks, pruned_heads, train_images, split.train_labels, recipe.pruned_epochs,
                     recipe, seed + 1)
        seconds = time.perf_counter() - started
        info = export_variant(zoo_dir, family, pruned_name(family.name, recipe.pruned_keep_fraction),
                              pruned_config, pruned_blocks, pruned_heads, held_images, split.held_out_labels,
                              compression="structured-pruning",
                              training={"epochs": recipe.pruned_epochs, "seed": seed + 1,
                                        "seconds": round(seconds, 1), "pruned_from": width_name(family.name, 1.0)})
        log(f"{info.name}: {seconds:.1f}s, exits {[e.accuracy for e in info.exits]}")
        variants.append(info)
        add_to_manifest(zoo_dir, [info], held_out_info(), {family.name: family.description})
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the default p2pinfer zoo (seeded).")
    parser.add_argument("--out", type=Path, default=DEFAULT_ZOO_DIR, help="zoo directory to write")
    parser.add_argument("--families", nargs="*", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to (re)train, e.g. digits-resnet-w0.25")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    for name in arguments.families:
        train_family(RECIPES[name], arguments.out, arguments.seed, log=lambda text: print(text, flush=True),
                     only=set(arguments.only) if arguments.only else None)
    print(f"trained {arguments.families} in {time.perf_counter() - started:.1f}s → {arguments.out}")


if __name__ == "__main__":
    main()
