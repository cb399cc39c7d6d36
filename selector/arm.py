"""The arm: what a policy chooses for one request.

An arm is a model ``variant``, the ``exit`` to stop at (the block index the exit head follows,
as the manifest and the planner number exits), and, for ANS-style policies that also learn where
to cut the network, the ``split`` boundary (blocks ``[0, split)`` run on the entry device, the
rest on a peer; ``None`` means no split is prescribed: the planner decides, or, in an ANS-style
arm set, the arm runs on the device alone).

Arms travel between nodes (merged statistics, saved state) as their :attr:`Arm.key` text,
``"<variant>@<exit>"`` or ``"<variant>@<exit>#<split>"``, e.g. ``"digits-resnet-w1.0@3"`` or
``"digits-resnet-w1.0@3#1"``. The key is parsed from its last ``@``, so a variant name may
contain any character; the key is also what equality and hashing use, which makes dictionary
look-ups on the decision path cost one cached string hash.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import SupportsIndex, cast

from selector.errors import InvalidArmError


def _non_negative_integer(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidArmError(f"{what} must be an integer, not a bool")
    try:
        number = operator.index(cast(SupportsIndex, value))  # accepts int and numpy integers, refuses floats
    except TypeError as error:
        raise InvalidArmError(f"{what} must be an integer, got {value!r}") from error
    if number < 0:
        raise InvalidArmError(f"{what} must be >= 0, got {number}")
    return number


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, eq=False)
class Arm:
    """One choice of (variant, exit[, split]); immutable, hashable, with a stable text key."""

    variant: str
    exit: int
    split: int | None = None
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant:
            raise InvalidArmError(f"variant must be a non-empty string, got {self.variant!r}")
        exit_index = _non_negative_integer(self.exit, "exit")
        split = None if self.split is None else _non_negative_integer(self.split, "split")
        object.__setattr__(self, "exit", exit_index)
        object.__setattr__(self, "split", split)
        key = f"{self.variant}@{exit_index}" if split is None else f"{self.variant}@{exit_index}#{split}"
        object.__setattr__(self, "key", key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Arm):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.key

    @classmethod
    def from_key(cls, key: str) -> Arm:
        """Parse ``"<variant>@<exit>"`` or ``"<variant>@<exit>#<split>"`` back into an arm."""
        if not isinstance(key, str) or "@" not in key:
            raise InvalidArmError(f"arm key must look like 'variant@exit[#split]', got {key!r}")
        variant, _, tail = key.rpartition("@")
        exit_text, has_split, split_text = tail.partition("#")
        if not _is_decimal(exit_text) or (has_split and not _is_decimal(split_text)):
            raise InvalidArmError(f"arm key must look like 'variant@exit[#split]', got {key!r}")
        return cls(variant, int(exit_text), int(split_text) if has_split else None)
