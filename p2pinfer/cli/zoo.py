"""``p2pinfer zoo list|show|profile|demo|import|exits``: the zoo as rich tables, bringing a model in, and
training early exits for it."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from p2pinfer.cli.console import cli_console, cli_table
from zoo.manifest import read_manifest


def _megaflops(flops: int) -> str:
    return f"{flops / 1e6:.2f}"


def zoo_list(zoo_dir: str | None, console: Console) -> None:
    manifest = read_manifest(zoo_dir)
    table = cli_table("p2pinfer zoo", ("variant", "family", "compression", "params", "MFLOPs", "weights KB",
                                       "accuracy per exit"), names=("variant", "family"))
    for variant in sorted(manifest.variants.values(), key=lambda v: (v.family, -v.flops_total)):
        table.add_row(variant.name, variant.family, variant.compression, f"{variant.params_total:,}",
                      _megaflops(variant.flops_total), f"{variant.weights_bytes / 1024:.0f}",
                      " ".join(f"{e.block}:{e.accuracy:.3f}" for e in variant.exits))
    console.print(table)


def zoo_show(zoo_dir: str | None, name: str, console: Console) -> None:
    variant = read_manifest(zoo_dir).variant(name)
    table = cli_table(f"{variant.name} ({variant.family}, {variant.compression}, width {variant.width:g})",
                      ("block", "input", "output", "output bytes", "params", "MFLOPs", "exit accuracy"))
    for block in variant.blocks:
        accuracy = next((f"{e.accuracy:.3f}" for e in variant.exits if e.block == block.index), "")
        table.add_row(str(block.index), "x".join(map(str, block.input_shape)), "x".join(map(str, block.output_shape)),
                      f"{block.output_bytes:,}", f"{block.params:,}", _megaflops(block.flops), accuracy)
    console.print(table)
    console.print(f"weights {variant.weights_file} sha256 {variant.sha256[:16]}… training {variant.training}")


def zoo_profile(zoo_dir: str | None, names: list[str], threads: int, repeats: int, use_cache: bool,
                console: Console) -> None:
    from zoo.profiling import profile_variant

    manifest = read_manifest(zoo_dir)
    table = cli_table(f"per-block latency, ms (median of {repeats}, {threads} thread(s))",
                      ("variant", "blocks", "exit heads", "total"), names=("variant",))
    for name in names or sorted(manifest.variants):
        profile = profile_variant(manifest.variant(name), zoo_dir=zoo_dir, threads=threads, repeats=repeats,
                                  use_cache=use_cache)
        table.add_row(name, " ".join(f"{ms:.3f}" for ms in profile.block_ms),
                      " ".join(f"{ms:.3f}" for ms in profile.exit_ms.values()), f"{sum(profile.block_ms):.3f}")
    console.print(table)


def zoo_demo(zoo_dir: str | None, console: Console) -> None:
    """Load every variant, classify 8 of its held-out inputs at its first and final exits, print a table."""
    import torch

    from zoo.dataset import held_out_of
    from zoo.model_slice import load_slice

    manifest = read_manifest(zoo_dir)
    table = cli_table("zoo demo: 8 held-out inputs per variant",
                      ("variant", "true labels", "final exit says", "first exit says", "correct (final)"),
                      names=("variant",))
    for variant in sorted(manifest.variants.values(), key=lambda v: v.name):
        images, labels = held_out_of(variant, 8)
        model = load_slice(variant, zoo_dir=zoo_dir)
        with torch.inference_mode():
            first_exit = variant.exit_blocks[0]  # block 0 for digits, block 1 for text-orientation
            hidden = model.run(images, 0, first_exit)
            first = model.exit_logits(first_exit, hidden).argmax(-1)
            final = model.exit_logits(variant.block_count - 1, model.run(hidden, first_exit + 1)).argmax(-1)
        table.add_row(variant.name, " ".join(map(str, labels.tolist())), " ".join(map(str, final.tolist())),
                      " ".join(map(str, first.tolist())), f"{int((final == labels).sum())}/{len(labels)}")
    console.print(table)


def run_zoo_command(arguments: argparse.Namespace) -> int:
    """0 on success, 2 with one line on stderr when the zoo or a variant named is not there."""
    from zoo.errors import ZooError

    try:
        return _run_zoo_command(arguments)
    except ZooError as error:
        print(f"p2pinfer zoo: {error}", file=sys.stderr)
        return 2


def _run_zoo_command(arguments: argparse.Namespace) -> int:
    console = cli_console()
    if arguments.zoo_command == "list":
        zoo_list(arguments.zoo, console)
    elif arguments.zoo_command == "show":
        zoo_show(arguments.zoo, arguments.variant, console)
    elif arguments.zoo_command == "profile":
        zoo_profile(arguments.zoo, arguments.variants, arguments.threads, arguments.repeats, not arguments.no_cache,
                    console)
    elif arguments.zoo_command == "demo":
        zoo_demo(arguments.zoo, console)
    elif arguments.zoo_command == "import":
        from zoo.importing import run_import

        return run_import(arguments)
    elif arguments.zoo_command == "exits":
        from zoo.imported_exits import run_exits

        return run_exits(arguments)
    return 0
