"""Context encoding: documented ranges, monotonicity, typed errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selector import (
    DIMENSION,
    FEATURE_NAMES,
    ContextError,
    ContextInputs,
    QoEWeights,
    encode,
)

positive = st.floats(min_value=0.0, max_value=1e12, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(budget=st.floats(min_value=-100.0, max_value=1e7, allow_nan=False), input_bytes=positive,
       bandwidth=st.floats(min_value=0.0, max_value=math.inf, allow_nan=False),
       rtt=st.floats(min_value=0.0, max_value=math.inf, allow_nan=False), load=unit, throttle=unit, pressure=unit,
       weights=st.tuples(unit, unit, unit).filter(lambda w: sum(w) > 0))
def test_every_feature_is_in_the_unit_interval(budget, input_bytes, bandwidth, rtt, load, throttle, pressure,
                                               weights):
    vector = encode(ContextInputs(budget_ms=budget, input_bytes=input_bytes, own_load=load, own_throttle=throttle,
                                  best_link_bandwidth_mbps=bandwidth, best_link_rtt_ms=rtt, peers_mean_load=load,
                                  peers_mean_throttle=throttle, weights=QoEWeights(*weights),
                                  pressure_level=pressure))
    assert vector.shape == (DIMENSION,) == (len(FEATURE_NAMES),)
    assert DIMENSION <= 16
    assert np.isfinite(vector).all() and (vector >= 0).all() and (vector <= 1).all()
    assert vector[FEATURE_NAMES.index("bias")] == 1.0


def test_features_move_the_documented_way():
    def feature(name, **changes):
        inputs = {"budget_ms": 100.0, "input_bytes": 3136, "best_link_bandwidth_mbps": 20.0, "best_link_rtt_ms": 5.0}
        return encode(ContextInputs(**{**inputs, **changes}))[FEATURE_NAMES.index(name)]

    assert feature("budget_log", budget_ms=1000) > feature("budget_log", budget_ms=100)
    assert feature("budget_tightness", budget_ms=20) > feature("budget_tightness", budget_ms=200)
    assert feature("bandwidth_log", best_link_bandwidth_mbps=100) > feature("bandwidth_log")
    assert feature("input_transfer_share", best_link_bandwidth_mbps=1) > feature("input_transfer_share")
    assert feature("rtt_share", best_link_rtt_ms=50) > feature("rtt_share")
    assert feature("input_bytes_log", input_bytes=10**6) > feature("input_bytes_log")
    # no link: offloading reads as impossible
    no_link = encode(ContextInputs(budget_ms=100.0, input_bytes=3136))
    assert no_link[FEATURE_NAMES.index("input_transfer_share")] == 1.0
    assert no_link[FEATURE_NAMES.index("rtt_share")] == 1.0
    # weight shares only depend on ratios
    a = encode(ContextInputs(budget_ms=50, input_bytes=1, weights=QoEWeights(1, 0.5, 0.1)))
    b = encode(ContextInputs(budget_ms=50, input_bytes=1, weights=QoEWeights(2, 1, 0.2)))
    np.testing.assert_allclose(a, b)


def test_malformed_inputs_raise_context_errors():
    with pytest.raises(ContextError):
        encode(ContextInputs(budget_ms=math.nan, input_bytes=1))
    with pytest.raises(ContextError):
        encode(ContextInputs(budget_ms=10, input_bytes=-1))
    with pytest.raises(ContextError):
        encode(ContextInputs(budget_ms=10, input_bytes=1, own_load=math.inf))
