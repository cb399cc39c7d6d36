"""Policy names the harness runs and reports on, read from the node's own registry.

The node declares its policies in two places: the bandits of ``selector.registry`` (and their
``discounted-`` forms) and the static baselines of ``p2pinfer.planning.selection``; its
``--policy`` choices are ``known_policies()`` of the latter. The harness asks the same
functions, so a policy name is checked before any node starts, and the lists here cannot
drift from the node's.
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.scenario import HarnessError
from p2pinfer.planning.selection import STATIC_BASELINES as NODE_BASELINES
from p2pinfer.planning.selection import known_policies
from selector.registry import DISCOUNTED_PREFIX, policy_names

STATIC_BASELINES: tuple[str, ...] = tuple(NODE_BASELINES)
"""The static schemes of the literature (never look at live load, heat or bandwidth)."""
ADAPTIVE_POLICIES: tuple[str, ...] = tuple(name.removeprefix(DISCOUNTED_PREFIX) for name in policy_names()
                                           if name.startswith(DISCOUNTED_PREFIX))
"""The learning policies (those that also exist as ``discounted-<name>``), in registry order."""
DEFAULT_POLICIES: tuple[str, ...] = ("fixed", "random", *STATIC_BASELINES, *ADAPTIVE_POLICIES)
"""What ``p2pinfer bench`` runs unless told otherwise: every baseline and every bandit."""


class UnknownPolicy(HarnessError):
    """A policy name the node does not know: said before any node starts."""

    def __init__(self, unknown: Iterable[str]) -> None:
        self.unknown = list(unknown)
        names = ", ".join(repr(name) for name in self.unknown)
        super().__init__(f"unknown polic{'y' if len(self.unknown) == 1 else 'ies'} {names}; "
                         f"known: {', '.join(known_policies())}")


def canonical_policy(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def same_policy(answered: str, requested: str) -> bool:
    """Whether the policy a node names in its answers is the one asked for (a node may add
    detail after the name, e.g. ``linucb+mask`` or ``linucb(alpha=1)``)."""
    answered, requested = canonical_policy(answered), canonical_policy(requested)
    return answered == requested or (answered.startswith(requested)
                                     and not answered[len(requested)].isalnum())


LEARNING_POLICIES: tuple[str, ...] = tuple(name for name in policy_names() if name not in ("fixed", "random"))
"""Every bandit of the registry, also those without a ``discounted-`` form (``adaptive-linucb``)."""


def is_adaptive(name: str) -> bool:
    """A learning policy's name (``discounted-`` forms and names with detail included)."""
    return any(name == prefix or name.startswith(prefix)
               for prefix in (*ADAPTIVE_POLICIES, *LEARNING_POLICIES, DISCOUNTED_PREFIX))


def check_policies(names: Iterable[str]) -> list[str]:
    """``names`` in canonical form, without repeats; raises :class:`UnknownPolicy` naming every
    unknown one and listing the known ones."""
    known = set(known_policies())
    policies: list[str] = []
    for item in names:
        name = canonical_policy(item)
        if name and name not in policies:
            policies.append(name)
    unknown = [name for name in policies if name not in known]
    if unknown:
        raise UnknownPolicy(unknown)
    return policies
