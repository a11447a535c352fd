"""NHS number check digit (ihe.nhs): pure."""

from __future__ import annotations

import pytest

from ihe.nhs import is_nhs_number, nhs_check_digit, nhs_number_problem


@pytest.mark.parametrize("number", ["9434765919", "4010232137", "9000000017", "0000000000"])
def test_valid_numbers(number):
    assert nhs_number_problem(number) is None and is_nhs_number(number)


def test_check_digit_arithmetic():
    # 943476591: 9*10+4*9+3*8+4*7+7*6+6*5+5*4+9*3+1*2 = 299; 299 mod 11 = 2; 11 - 2 = 9.
    assert nhs_check_digit("943476591") == 9
    assert nhs_check_digit("000000000") == 0  # 11 - 0 = 11 -> 0
    assert nhs_check_digit("123456789") is None  # 11 - (210 mod 11 = 1) = 10: no such number
    with pytest.raises(ValueError):
        nhs_check_digit("12345678")


@pytest.mark.parametrize(("number", "words"), [
    ("9434765918", "wrong check digit (expected 9, found 8)"),
    ("9434765991", "wrong check digit"),  # two digits swapped
    ("1234567890", "no check digit exists"),
    ("943476591", "not ten digits"),
    ("943 476 5919", "not ten digits"),
    ("94347659l9", "not ten digits"),
    ("", "not ten digits"),
    ("９４３４７６５９１９", "not ten digits"),  # full-width digits are not ASCII digits
])
def test_invalid_numbers_say_why(number, words):
    problem = nhs_number_problem(number)
    assert problem is not None and words in problem
    assert not is_nhs_number(number)
