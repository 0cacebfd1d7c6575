"""companion.exercises: pass/fail with a hint, tolerant input types, clear errors for misuse."""

import math

import numpy as np
import pytest
import torch

from companion.exercises import Check, check_close, check_true


def test_exact_and_close_answers_pass():
    assert check_close("a", 0.5, 0.5).passed
    assert check_close("a", 0.5 + 1e-9, 0.5).passed
    assert check_close("a", [1.0, 2.0], (1.0, 2.0 * (1 + 5e-7))).passed


def test_tolerance_is_relative_plus_absolute():
    assert not check_close("a", 1.01, 1.0).passed
    assert check_close("a", 1.01, 1.0, rtol=0.02).passed
    assert check_close("a", 1e-10, 0.0).passed  # atol covers zero targets
    assert not check_close("a", 1e-6, 0.0).passed


def test_numpy_and_torch_answers_are_read_element_wise():
    assert check_close("a", np.array([[0.5, -0.5]]), [0.5, -0.5]).passed
    assert check_close("a", torch.tensor([0.5, -0.5], requires_grad=True), [0.5, -0.5]).passed
    assert check_close("a", np.float64(0.25), 0.25).passed


def test_failures_say_where_and_keep_the_hint():
    check = check_close("advantages", [0.5, 0.5], [0.5, -0.5], hint="subtract the mean")
    assert not check and not check.passed
    assert "position 1" in check.message and "-0.5" in check.message
    assert "Hint: subtract the mean" in str(check)
    assert "subtract the mean" in check._repr_html_()


def test_hint_is_not_shown_on_success():
    check = check_close("x", 1.0, 1.0, hint="secret")
    assert "secret" not in str(check) and "secret" not in check._repr_html_()
    assert str(check).startswith("✅")


def test_blank_wrong_shape_nan_and_wrong_type_fail_softly():
    assert "No answer" in check_close("x", None, 1.0).message
    assert "Expected 2" in check_close("x", [1.0], [1.0, 2.0]).message
    assert not check_close("x", math.nan, 1.0).passed
    assert not check_close("x", "0.5", 0.5).passed
    assert not check_close("x", True, 1.0).passed


def test_misuse_raises():
    with pytest.raises(ValueError, match="rtol"):
        check_close("x", 1.0, 1.0, rtol=-1)
    with pytest.raises(TypeError, match="expected"):
        check_close("x", 1.0, "one")
    with pytest.raises(TypeError, match="condition"):
        check_true("x", 1, "no")


def test_check_true():
    assert check_true("claim", True, "it is not").passed
    failed = check_true("claim", False, "it is not", hint="look at Eq. 9")
    assert failed.message == "it is not" and "Eq. 9" in str(failed)


def test_html_escapes_user_text():
    check = Check("<b>name</b>", False, "a < b", "use <i>")
    rendered = check._repr_html_()
    assert "&lt;b&gt;name&lt;/b&gt;" in rendered and "a &lt; b" in rendered and "use &lt;i&gt;" in rendered
