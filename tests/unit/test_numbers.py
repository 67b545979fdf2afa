import pytest

from siprec_server.numbers import normalize_number


@pytest.mark.parametrize(
    "text",
    ["+44 20 7946 0000", "00442079460000", "sip:+442079460000@host", "tel:+44-20-7946-0000",
     "sips:+442079460000@host;user=phone", "(+44) 20.7946.0000", "sip:%2B442079460000@h"],
)
def test_every_spelling_of_an_international_number_matches(text: str) -> None:
    assert normalize_number(text) == "+442079460000"


@pytest.mark.parametrize(
    ("text", "number"),
    [("sip:8101@10.21.0.216;user=phone", "8101"), ("7602922410", "7602922410"),
     ("tel:2001", "2001")],
)
def test_national_and_extension_numbers_keep_their_digits(text: str, number: str) -> None:
    assert normalize_number(text) == number


@pytest.mark.parametrize(
    "text", ["sip:alice@atlanta.com", "Extension-016190619@speechpath.ie", "sip:@host", "", "+",
             "sip:host-only", "1"],
)
def test_names_and_hosts_are_not_numbers(text: str) -> None:
    assert normalize_number(text) is None
