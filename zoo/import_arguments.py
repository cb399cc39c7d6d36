"""The command line of a model import, apart from the import itself.

Why a module of its own: ``p2pinfer``'s parser lists every verb at start-up, and the
importer imports torch; the arguments alone must stay cheap to import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_BLOCKS = 4


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected e.g. 3,224,224") from None


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
