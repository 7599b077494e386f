import pytest

from energyhub.domain.ean import EanError, ean_check_digit, validate_ean


@pytest.mark.parametrize(
    ("body", "digit"),
    [
        ("87123456789012345", 1),  # worked by hand: weights 3,1,3,... from the right, sum 159
        ("00000000000000000", 0),
        ("87160000000000001", 7),  # sum 43
        ("99999999999999999", 5),  # 9 x 27 + 8 x 9 = 315
    ],
)
def test_check_digit(body, digit):
    assert ean_check_digit(body) == digit


def test_agrees_with_a_known_gtin():
    # GS1 keys share one right-aligned check digit rule, so a known-good GTIN-13 (4006381333931) padded with
    # zeros to 18 digits must validate, and any other last digit must not.
    assert validate_ean("000004006381333931")
    with pytest.raises(EanError):
        validate_ean("000004006381333932")


def test_valid_ean_passes():
    assert validate_ean("871234567890123451") == "871234567890123451"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("871234567890123454", "check digit of 871234567890123454 is 4, expected 1: the EAN has a typo"),
        ("87123456789012345", "'87123456789012345' is not 18 digits (it has 17 characters)"),
        ("8712345678901234AB", "'8712345678901234AB' is not 18 digits (it has 18 characters)"),
        (
            "".join(chr(0xFF10 + int(d)) for d in "871234567890123451"),
            "is not 18 digits",
        ),  # full-width digits
    ],
)
def test_bad_ean_names_the_problem(value, message):
    with pytest.raises(EanError, match=None) as info:
        validate_ean(value)
    assert message in str(info.value)


def test_every_single_digit_typo_is_caught():
    good = "871234567890123451"
    for pos in range(18):
        for d in "0123456789":
            if d == good[pos]:
                continue
            typo = good[:pos] + d + good[pos + 1 :]
            with pytest.raises(EanError):
                validate_ean(typo)
