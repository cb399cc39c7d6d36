"""Policies by name: what ``p2pinfer node --policy NAME`` and saved state files refer to.

Names: ``linucb``, ``thompson``, ``mulinucb``, ``epsilon-greedy``, ``adaptive-linucb`` (change
detection and arm features shared across arms, see ``selector.adaptive_linucb``), ``fixed``,
``random``. The
learning ones also exist as ``discounted-<name>``, so a command line can ask for the
non-stationary version without extra flags: it forgets per observation of the same arm
(``arm_discount=0.995``, about the last 200 observations of each arm), unless the caller passes
``discount`` / ``arm_discount`` itself. Why not a global ``discount``: with ~30 arms and a 16-dim
context, forgetting per observation to *any* arm leaves each arm too few effective observations;
in ``benchmarks/selector_regret.py`` ``discount=0.999`` cost about 30% more regret than no
discounting, while ``arm_discount=0.995`` was on par and adapted the played arms faster. A global
discount still fits small arm sets (it is what re-explores arms that were abandoned).
"""

from __future__ import annotations

import inspect
from typing import Any

from selector.adaptive_linucb import AdaptiveLinUCBPolicy
from selector.baselines import FixedPolicy, RandomPolicy
from selector.epsilon_greedy import EpsilonGreedyPolicy
from selector.errors import InvalidParameterError, SelectorError, UnknownPolicyError
from selector.linear_policy import LinearPolicy
from selector.linucb import LinUCBPolicy
from selector.mulinucb import MuLinUCBPolicy
from selector.policy import Policy
from selector.thompson import ThompsonPolicy

DISCOUNTED_DEFAULTS = {"arm_discount": 0.995}
DISCOUNTED_PREFIX = "discounted-"

POLICY_CLASSES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (LinUCBPolicy, ThompsonPolicy, MuLinUCBPolicy, EpsilonGreedyPolicy, AdaptiveLinUCBPolicy, FixedPolicy,
                RandomPolicy)
}


def _has_discounted_variant(cls: type[Policy]) -> bool:
    return issubclass(cls, LinearPolicy) and cls.has_discounted_variant


def policy_names() -> tuple[str, ...]:
    """Every name :func:`make_policy` accepts."""
    learning = [name for name, cls in POLICY_CLASSES.items() if _has_discounted_variant(cls)]
    return (*POLICY_CLASSES, *(DISCOUNTED_PREFIX + name for name in learning))


def _policy_class(name: str) -> tuple[type[Policy], bool]:
    """The class a policy name stands for, and whether the name asked for its discounted version."""
    if not isinstance(name, str):
        raise UnknownPolicyError(f"policy name must be a string, got {name!r}")
    canonical = name.strip().lower().replace("_", "-")
    discounted = canonical.startswith(DISCOUNTED_PREFIX)
    cls = POLICY_CLASSES.get(canonical.removeprefix(DISCOUNTED_PREFIX) if discounted else canonical)
    if cls is None or (discounted and not _has_discounted_variant(cls)):
        raise UnknownPolicyError(f"unknown policy {name!r}; known: {', '.join(policy_names())}")
    return cls, discounted


def takes_seed(name: str) -> bool:
    """Whether the named policy draws random numbers, so a run that must repeat passes it a
    ``seed``: true exactly when its constructor takes one (read from the constructor, so no
    second list can fall out of step). Raises :class:`UnknownPolicyError` for an unknown name."""
    cls, _ = _policy_class(name)
    return "seed" in inspect.signature(cls).parameters


def make_policy(name: str, dimension: int, **options: Any) -> Policy:
    """A fresh policy by name; ``options`` go to its constructor (e.g. ``alpha``, ``seed``,
    ``discount``, ``arm`` for ``fixed``). Raises :class:`UnknownPolicyError` for an unknown name
    and :class:`InvalidParameterError` for options the policy does not take."""
    cls, discounted = _policy_class(name)
    if discounted and "discount" not in options and "arm_discount" not in options:
        options.update(DISCOUNTED_DEFAULTS)
    try:
        return cls(dimension, **options)
    except SelectorError:
        raise
    except TypeError as error:  # an option this policy does not take
        raise InvalidParameterError(f"policy {cls.name!r}: {error}") from error
