"""The command lines of a model import and of its exits, apart from the work itself.

Why a module of its own: ``p2pinfer``'s parser lists every verb at start-up, and the
importer imports torch; the arguments alone must stay cheap to import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_BLOCKS = 4
DEFAULT_EXIT_EPOCHS = 20
DEFAULT_EXIT_SEED = 0
EXITS_DESCRIPTION = (
    "Train a small exit head after each block of an imported family (BranchyNet-style, on the frozen "
    "backbone's cached features, fixed seed), measure every exit's held-out accuracy (the final logits' too), "
    "and write the heads (heads.{block}.* in the variant's safetensors), their specification, params, FLOPs "
    "and accuracies, and the new sha256 into the zoo's manifest. `p2pinfer node --zoo DIR` then serves the "
    "exits. Re-running replaces the heads.")
EXITS_DATA_FORMAT = (
    "DATA is a directory holding train.npz (trains the heads) and held_out.npz (measures every exit), each "
    "written with numpy.savez: 'inputs', float32, shape (N, *input_shape) as the manifest records it (already "
    "preprocessed: what the model's first block takes), and 'labels', int64, shape (N,), values in "
    "[0, num_classes). Read with allow_pickle=False: object arrays are refused.")


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected e.g. 3,224,224") from None


def _blocks(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad block list {text!r}: expected e.g. 1,2") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_import_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("source", help="an .onnx file, or package.module:factory returning a torch.nn.Module")
    parser.add_argument("--name", required=True, help="family name (also the variant name unless --variant)")
    parser.add_argument("--zoo", required=True, type=Path, help="zoo directory to write (created if absent)")
    parser.add_argument("--blocks", type=int, default=None,
                        help=f"number of blocks (default {DEFAULT_BLOCKS}, or fewer when the model has fewer points "
                             "where one tensor is live, said on stderr; a model with none needs --blocks 1)")
    parser.add_argument("--input-shape", type=_shape, default=None, help="one sample's shape, e.g. 3,224,224")
    parser.add_argument("--variant", default=None, help="variant name (default: the family name)")
    return parser


def add_exits_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``zoo exits``'s arguments; the data format goes in the help's epilog."""
    parser.description = EXITS_DESCRIPTION
    parser.epilog = EXITS_DATA_FORMAT
    parser.add_argument("family", help="an imported family (every variant of it), or one variant's name")
    parser.add_argument("--zoo", required=True, type=Path, help="the zoo directory `zoo import` wrote")
    parser.add_argument("--data", required=True, type=Path,
                        help="directory with train.npz and held_out.npz (inputs, labels; see below)")
    parser.add_argument("--variant", default=None, help="only this variant of the family")
    parser.add_argument("--blocks-with-exits", type=_blocks, default=None, metavar="K[,K...]",
                        help="blocks to put an exit after (default: every block but the last, which ends in the "
                             "logits)")
    parser.add_argument("--epochs", type=_positive, default=DEFAULT_EXIT_EPOCHS,
                        help=f"training epochs per head (default {DEFAULT_EXIT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_EXIT_SEED,
                        help=f"seed of the heads' initialisation and batch order (default {DEFAULT_EXIT_SEED})")
    return parser
