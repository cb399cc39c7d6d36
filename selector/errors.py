"""Typed errors of the selector package.

Every error the selector raises on purpose derives from :class:`SelectorError`, so the node
can catch one type at the boundary (turn it into a 4xx or a log line) without also catching
programming errors such as ``TypeError`` from its own code.
"""

from __future__ import annotations


class SelectorError(Exception):
    """Base class of every error raised on purpose by the selector package."""


class UnknownPolicyError(SelectorError):
    """``make_policy`` (or a saved state) names a policy that does not exist."""


class InvalidParameterError(SelectorError, ValueError):
    """A policy, weight or encoder parameter is outside its documented range."""


class InvalidArmError(SelectorError):
    """An arm or an arm key is malformed (empty variant, negative exit, bad key text)."""


class ContextError(SelectorError):
    """A context vector or its inputs are malformed: wrong shape, NaN or infinite values."""


class MaskError(SelectorError):
    """A feasibility mask does not match the arms it is meant to filter."""


class NoArmsError(SelectorError):
    """``select`` was called with an empty arm list: there is nothing to choose from."""


class NoFeasibleArmError(SelectorError):
    """Every arm is masked. Use ``select_feasible`` to degrade to the cheapest arm instead."""


class StatisticsError(SelectorError):
    """Sufficient statistics cannot be merged or decoded (dimension mismatch, bad payload)."""


class PersistenceError(SelectorError):
    """A saved policy file is unreadable, of an unknown format, or inconsistent."""


class AccuracyFloorError(SelectorError):
    """No arm's accuracy reaches the request's ``min_accuracy``: answering anyway would break
    the one promise the user asked for. ``best`` is the highest accuracy any arm offers."""

    def __init__(self, message: str, *, best: float) -> None:
        super().__init__(message)
        self.best = best
