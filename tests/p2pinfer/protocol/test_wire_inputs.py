"""Model-input checks (validate_input) and JSON tensors (json_tensor): each bad input gets the
typed error that names what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pinfer.errors import BadDtype, BadShape, NonFiniteInput
from p2pinfer.protocol.wire import json_tensor, validate_input

DIGIT_SHAPE = (1, 8, 8)


def digits(batch: int = 1, dtype=np.float32) -> np.ndarray:
    return np.zeros((batch, *DIGIT_SHAPE), dtype=dtype)


# ---- validate_input ---------------------------------------------------------------------------


def test_a_batch_of_the_right_shape_passes_untouched():
    batch = digits(3)
    checked = validate_input(batch, DIGIT_SHAPE, model="digits-cnn")
    assert checked is batch


def test_a_single_sample_gets_a_batch_axis_without_a_copy():
    one = np.ones(DIGIT_SHAPE, dtype=np.float32)
    checked = validate_input(one, DIGIT_SHAPE, model="digits-cnn")
    assert checked.shape == (1, *DIGIT_SHAPE)
    assert np.shares_memory(checked, one)


def test_a_wrong_shape_names_both_shapes():
    with pytest.raises(BadShape) as caught:
        validate_input(np.zeros((1, 9, 9), dtype=np.float32), DIGIT_SHAPE, model="digits-cnn")
    assert caught.value.message == "input shape [1, 9, 9] does not match digits-cnn's [N, 1, 8, 8]"
    with pytest.raises(BadShape, match=r"\[2, 2, 1, 8, 8\]"):
        validate_input(np.zeros((2, 2, 1, 8, 8), dtype=np.float32), DIGIT_SHAPE, model="digits-cnn")


def test_an_empty_batch_is_a_bad_shape():
    with pytest.raises(BadShape, match="empty batch"):
        validate_input(digits(0), DIGIT_SHAPE, model="digits-cnn")


def test_a_batch_over_the_limit_is_a_bad_shape():
    validate_input(digits(4), DIGIT_SHAPE, max_batch=4)
    with pytest.raises(BadShape, match="limit of 4"):
        validate_input(digits(5), DIGIT_SHAPE, max_batch=4)


def test_a_dtype_the_model_does_not_take_is_a_bad_dtype():
    with pytest.raises(BadDtype, match="int64 is not accepted by digits-cnn"):
        validate_input(digits(dtype=np.int64), DIGIT_SHAPE, ("float32", "float16"), model="digits-cnn")
    validate_input(digits(dtype=np.float16), DIGIT_SHAPE, ("float32", "float16"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_nan_and_inf_are_refused(bad, dtype):
    array = digits(2, dtype)
    array[1, 0, 3, 4] = bad
    with pytest.raises(NonFiniteInput, match="NaN or Inf"):
        validate_input(array, DIGIT_SHAPE, ("float32", "float16", "float64"))


@pytest.mark.parametrize("size", [64, 4096])
def test_finite_extremes_pass_and_one_nan_among_them_is_refused(size):
    """Finite values at the dtype's extremes (their sum would overflow) pass; one NaN or Inf
    among them, or + and - infinities together, is refused."""
    huge = np.full((1, size), np.finfo(np.float64).max / 2)  # finite, but their sum is Inf
    validate_input(huge, (size,), ("float64",))
    validate_input(np.full((1, size), np.finfo(np.float32).max, dtype=np.float32), (size,))
    for bad in (np.nan, np.inf):
        broken = huge.copy()
        broken[0, size // 2] = bad
        with pytest.raises(NonFiniteInput):
            validate_input(broken, (size,), ("float64",))
    mixed = np.zeros((1, size), dtype=np.float32)
    mixed[0, :2] = (np.inf, -np.inf)  # a NaN sum
    with pytest.raises(NonFiniteInput):
        validate_input(mixed, (size,))


def test_bfloat16_bits_are_checked_for_nan_and_inf():
    tensor = torch.zeros(1, *DIGIT_SHAPE, dtype=torch.bfloat16)
    raw = tensor.view(torch.int16).numpy().view(np.uint16)
    validate_input(raw, DIGIT_SHAPE, ("bfloat16",), dtype_name="bfloat16")
    tensor[0, 0, 0, 0] = float("inf")
    raw = tensor.view(torch.int16).numpy().view(np.uint16)
    with pytest.raises(NonFiniteInput):
        validate_input(raw, DIGIT_SHAPE, ("bfloat16",), dtype_name="bfloat16")
    with pytest.raises(BadDtype, match="uint16"):  # without the name, raw bits are just uint16
        validate_input(raw, DIGIT_SHAPE, ("bfloat16",))


def test_integer_inputs_are_not_checked_for_finiteness():
    image = np.full((1, 4, 4), 255, dtype=np.uint8)
    assert validate_input(image, (1, 4, 4), ("uint8",)).shape == (1, 1, 4, 4)


# ---- json_tensor ------------------------------------------------------------------------------


def test_nested_lists_become_an_array_of_the_dtype():
    array = json_tensor([[1, 2.5], [3, 4]], "float32")
    assert array.dtype == np.float32 and array.shape == (2, 2)
    assert array.tolist() == [[1.0, 2.5], [3.0, 4.0]]


def test_flat_data_takes_the_given_shape_row_major():
    array = json_tensor(list(range(6)), "int64", [2, 3])
    assert array.tolist() == [[0, 1, 2], [3, 4, 5]]
    nested = json_tensor([[0, 1], [2, 3], [4, 5]], "int64", [2, 3])  # nested in another layout, same order
    assert nested.tolist() == array.tolist()


def test_bools_become_a_bool_tensor():
    assert json_tensor([True, False], "bool").tolist() == [True, False]


def test_ragged_lists_are_a_bad_shape():
    with pytest.raises(BadShape, match="ragged"):
        json_tensor([[1, 2], [3]], "float32")
    with pytest.raises(BadShape, match="ragged"):
        json_tensor([[1, 2], 3], "float32")


@pytest.mark.parametrize("data", [["1.5", 2], [None, 1], [[1, 2], [3, None]], [{"a": 1}]])
def test_strings_and_nulls_are_a_bad_dtype(data):
    with pytest.raises(BadDtype):
        json_tensor(data, "float32")


def test_floats_for_an_integer_tensor_are_not_truncated_silently():
    with pytest.raises(BadDtype, match="non-integer"):
        json_tensor([1.5, 2], "int64")


@pytest.mark.parametrize("data,dtype", [([256], "uint8"), ([-1], "uint8"), ([2**31], "int32"), ([10**30], "int64")])
def test_out_of_range_integers_are_a_bad_dtype(data, dtype):
    with pytest.raises(BadDtype):
        json_tensor(data, dtype)


def test_numbers_for_a_bool_tensor_are_a_bad_dtype():
    with pytest.raises(BadDtype, match="bool"):
        json_tensor([1, 0], "bool")


def test_a_value_count_that_does_not_fill_the_shape_is_a_bad_shape():
    with pytest.raises(BadShape, match="10 values but shape \\[1, 64\\] needs 64"):
        json_tensor(list(range(10)), "float32", [1, 64])
    with pytest.raises(BadShape, match="negative"):
        json_tensor([1.0], "float32", [-1])


def test_data_that_is_not_a_list_is_a_bad_shape():
    with pytest.raises(BadShape, match="list"):
        json_tensor(3.0, "float32")


def test_unsupported_json_dtypes_are_a_bad_dtype():
    with pytest.raises(BadDtype, match="bfloat16"):
        json_tensor([1.0], "bfloat16")
    with pytest.raises(BadDtype, match="complex"):
        json_tensor([1.0], "complex64")
