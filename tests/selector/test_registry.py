"""Policies by name, and typed errors for names and options that do not exist."""

from __future__ import annotations

import pytest

from selector import (
    Arm,
    EpsilonGreedyPolicy,
    FixedPolicy,
    InvalidParameterError,
    LinUCBPolicy,
    MuLinUCBPolicy,
    RandomPolicy,
    SelectorError,
    ThompsonPolicy,
    UnknownPolicyError,
    make_policy,
    policy_names,
    takes_seed,
)


def test_every_name_builds_its_policy():
    expected = {"linucb": LinUCBPolicy, "thompson": ThompsonPolicy, "mulinucb": MuLinUCBPolicy,
                "epsilon-greedy": EpsilonGreedyPolicy, "random": RandomPolicy}
    for name, cls in expected.items():
        policy = make_policy(name, 8)
        assert type(policy) is cls and policy.dimension == 8
        assert getattr(policy, "discount", 1.0) == 1.0  # stationary unless asked
    assert isinstance(make_policy("fixed", 8, arm=Arm("v", 1)), FixedPolicy)
    assert set(expected) | {"fixed"} <= set(policy_names())


def test_discounted_names_and_option():
    discounted = make_policy("discounted-linucb", 4)
    assert (discounted.discount, discounted.arm_discount) == (1.0, 0.995)
    explicit = make_policy("Discounted_Thompson", 4, discount=0.9)
    assert (explicit.discount, explicit.arm_discount) == (0.9, 1.0)
    assert make_policy("linucb", 4, discount=0.95).discount == 0.95
    assert make_policy("linucb", 4).discount == 1.0


@pytest.mark.parametrize("name", ["lin-ucb", "ucb", "", "discounted-fixed", "discounted-random"])
def test_unknown_names_raise_a_typed_error(name):
    with pytest.raises(UnknownPolicyError) as raised:
        make_policy(name, 4)
    assert isinstance(raised.value, SelectorError)
    assert "linucb" in str(raised.value)  # says what exists


def test_bad_options_raise_a_typed_error():
    with pytest.raises(InvalidParameterError):
        make_policy("linucb", 4, alpha=-1.0)
    with pytest.raises(InvalidParameterError):
        make_policy("linucb", 4, no_such_option=1)
    with pytest.raises(InvalidParameterError):
        make_policy("fixed", 4)  # needs arm=
    with pytest.raises(InvalidParameterError):
        make_policy("linucb", 0)
    with pytest.raises(InvalidParameterError):
        make_policy("thompson", 4, discount=1.5)


def test_takes_seed_names_exactly_the_policies_that_draw_random_numbers():
    """One definition for the node and the benchmarks: the policies whose constructor takes a seed."""
    seeded = {name for name in policy_names() if takes_seed(name)}
    assert seeded == {"thompson", "mulinucb", "epsilon-greedy", "random", "discounted-thompson",
                      "discounted-mulinucb", "discounted-epsilon-greedy"}
    assert takes_seed("Discounted_Thompson") and not takes_seed("adaptive-linucb")
    for name in seeded:
        make_policy(name, 4, seed=3)  # each really takes one
    with pytest.raises(UnknownPolicyError):
        takes_seed("no-such-policy")
