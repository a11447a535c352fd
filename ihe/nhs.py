"""NHS numbers: the patient id of the affinity domain in England and Wales, and its check digit.

An NHS number is ten digits; the tenth is a modulus 11 check digit over the first nine
(weights 10 down to 2; 11 - (sum mod 11), where 11 gives 0 and 10 means no valid number
has these nine digits). A mistyped digit or two swapped digits always change it, so an
identifier source that sends a wrong one has a typo, and the id must not be recorded.
Pure functions, shared by the registry's feed and anyone else who takes NHS numbers.
"""

from __future__ import annotations

NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"


def nhs_check_digit(first_nine: str) -> int | None:
    """The check digit of nine digits, or None when no NHS number can start with them (remainder 1)."""
    if len(first_nine) != 9 or not first_nine.isascii() or not first_nine.isdigit():
        raise ValueError(f"{first_nine!r} is not nine digits")
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def nhs_number_problem(value: str) -> str | None:
    """Why ``value`` is not a valid NHS number, or None when it is one.

    Spaces and hyphens (``943 476 5919``, ``943-476-5919``) are not part of the number: an
    id that carries them is refused with that reason rather than silently normalised.
    """
    if len(value) != 10 or not value.isascii() or not value.isdigit():
        return f"NHS number {value!r} is not ten digits"
    check = nhs_check_digit(value[:9])
    if check is None:
        return f"NHS number {value!r} is not valid: no check digit exists for its first nine digits"
    if check != int(value[9]):
        return f"NHS number {value!r} has a wrong check digit (expected {check}, found {value[9]})"
    return None


def is_nhs_number(value: str) -> bool:
    return nhs_number_problem(value) is None
