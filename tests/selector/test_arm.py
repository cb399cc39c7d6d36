"""Arms have stable keys, parsed back exactly; malformed arms and keys are refused."""

from __future__ import annotations

import numpy as np
import pytest

from selector import Arm, InvalidArmError


def test_arm_keys_round_trip_and_define_identity():
    plain, split = Arm("digits-resnet-w1.0", 3), Arm("digits-resnet-w1.0", 3, split=1)
    assert plain.key == "digits-resnet-w1.0@3" and split.key == "digits-resnet-w1.0@3#1"
    assert Arm.from_key(plain.key) == plain and Arm.from_key(split.key) == split
    assert Arm.from_key("odd@name@2#0") == Arm("odd@name", 2, 0)
    assert plain != split and len({plain, Arm("digits-resnet-w1.0", np.int64(3)), split}) == 2
    assert str(split) == split.key


@pytest.mark.parametrize("bad", [("", 1, None), ("v", -1, None), ("v", 1.5, None), ("v", True, None), ("v", 1, -2)])
def test_malformed_arms_are_refused(bad):
    with pytest.raises(InvalidArmError):
        Arm(*bad)


@pytest.mark.parametrize("key", ["no-at-sign", "v@", "v@x", "v@1#", "v@1#y", "v@²"])
def test_malformed_keys_are_refused(key):
    with pytest.raises(InvalidArmError):
        Arm.from_key(key)
