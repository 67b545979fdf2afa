"""Shamir over GF(2^8): the field against FIPS-197's worked examples, fixed split vectors, and the
two properties that matter (any t of n give the secret; fewer say nothing about it)."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.shamir import ShamirError, combine, gf_div, gf_mul, split


def test_multiplication_matches_fips_197() -> None:
    # FIPS-197 §4.2: {57} • {83} = {c1}; §4.2.1: {57} • {13} = {fe}; {53} and {ca} are inverses.
    assert gf_mul(0x57, 0x83) == 0xC1
    assert gf_mul(0x57, 0x13) == 0xFE
    assert gf_mul(0x53, 0xCA) == 0x01
    assert gf_div(1, 0x53) == 0xCA


def test_field_laws_hold_for_every_pair() -> None:
    for a in range(256):
        assert gf_mul(a, 1) == a and gf_mul(a, 0) == 0
        if a:
            assert gf_mul(a, gf_div(1, a)) == 1
    for a, b in [(0x02, 0x87), (0xFF, 0xFF), (0x80, 0x02)]:
        assert gf_mul(a, b) == gf_mul(b, a)
    # x * 2 is a shift with reduction by 0x11b: the "xtime" of FIPS-197 §4.2.1.
    assert gf_mul(0x80, 0x02) == 0x1B
    with pytest.raises(ZeroDivisionError):
        gf_div(1, 0)


def test_split_of_a_fixed_polynomial() -> None:
    # f(x) = 0x42 + 0x07 x: f(1) = 0x45, f(2) = 0x42 ^ 0x0e = 0x4c, f(3) = 0x42 ^ 0x09 = 0x4b.
    shares = split(b"\x42", 3, 2, random_bytes=lambda n: b"\x07" * n)
    assert shares == [(1, b"\x45"), (2, b"\x4c"), (3, b"\x4b")]
    assert combine([(2, b"\x4c"), (3, b"\x4b")]) == b"\x42"


def test_any_threshold_of_the_shares_give_the_secret_back() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 5, 3)
    for chosen in itertools.combinations(shares, 3):
        assert combine(list(chosen)) == secret
    assert combine(shares) == secret  # more than t is fine too


def test_a_damaged_share_silently_gives_another_secret() -> None:
    """Why every reconstruction is checked against the version's commitment."""
    secret = secrets.token_bytes(32)
    (x1, y1), (x2, y2), _ = split(secret, 3, 2)
    damaged = bytes([y2[0] ^ 1]) + y2[1:]
    assert combine([(x1, y1), (x2, damaged)]) != secret


def test_below_the_threshold_every_secret_is_equally_likely() -> None:
    # One share of a 2-of-n split of a one-byte secret: over many splits its value is uniform,
    # whatever the secret. Exhaustively over the coefficient: each y appears exactly once.
    for secret in (0x00, 0x5A, 0xFF):
        seen = Counter(split(bytes([secret]), 2, 2, random_bytes=lambda n, c=c: bytes([c]))[0][1]
                       for c in range(256))
        assert len(seen) == 256 and set(seen.values()) == {1}


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), n=st.integers(2, 10), data=st.data())
def test_property_round_trip(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    shares = split(secret, n, t)
    chosen = data.draw(st.permutations(shares))[:t]
    assert combine(chosen) == secret


@pytest.mark.parametrize(("n", "t"), [(1, 1), (3, 1), (3, 4), (256, 2)])
def test_bad_parameters_are_refused(n: int, t: int) -> None:
    with pytest.raises(ShamirError):
        split(b"k", n, t)


def test_bad_share_sets_are_refused() -> None:
    with pytest.raises(ShamirError):
        combine([(1, b"a")])
    with pytest.raises(ShamirError):
        combine([(1, b"a"), (1, b"b")])
    with pytest.raises(ShamirError):
        combine([(1, b"a"), (2, b"bc")])
    with pytest.raises(ShamirError):
        combine([(0, b"a"), (2, b"b")])
