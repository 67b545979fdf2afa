"""Shamir secret sharing over GF(2^8): a secret of any length split into n shares, any t of which
give it back and fewer give nothing (every value of the secret stays equally likely).

Each byte of the secret is the constant term of its own random polynomial of degree t - 1 over
GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1); share x holds every polynomial's value at x
(x = 1..n, never 0, which is the secret). Combining is Lagrange interpolation at 0.

Why not a library: the candidates on PyPI either fix a format this server does not want
(shamir-mnemonic is SLIP-39: word lists, groups, its own 4-byte digest and passphrase cipher;
last release 2024), cover 16-byte secrets only (pycryptodome's Shamir, a second crypto
library beside `cryptography`), or are small single-maintainer ports with little use (pyshamir,
shamirs). The arithmetic is a page; tests pin it with the FIPS-197 multiplication examples and
with properties (any t of n give the secret back; t - 1 shares are uniform).

Nothing here detects a wrong share: interpolation of a damaged share yields a wrong secret
without any error. Callers check every share against its digest and every reconstruction
against the commitment stored with the key version (storage/custody.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

__all__ = ["MAX_SHARES", "ShamirError", "combine", "gf_div", "gf_mul", "split"]

MAX_SHARES = 255


class ShamirError(ValueError):
    """Parameters or shares that cannot be used."""


def _tables() -> tuple[list[int], list[int]]:
    # 3 generates the multiplicative group of GF(2^8) with the AES polynomial.
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        # value * 3 = value * 2 + value, with the reduction by 0x11B when it overflows.
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    for power in range(255, 510):
        exp[power] = exp[power - 255]
    return exp, log


_EXP, _LOG = _tables()


def gf_mul(a: int, b: int) -> int:
    """a * b in GF(2^8)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    """a / b in GF(2^8); b must not be 0."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule; coefficients[0] is the constant term."""
    result = 0
    for coefficient in reversed(coefficients):
        result = gf_mul(result, x) ^ coefficient
    return result


def split(secret: bytes, shares: int, threshold: int,
          *, random_bytes: object = None) -> list[tuple[int, bytes]]:
    """`shares` pairs (x, y) with x = 1..shares; any `threshold` of them give `secret` back.

    `random_bytes(n)` may replace the system's CSPRNG in tests (fixed vectors)."""
    if not secret:
        raise ShamirError("the secret is empty")
    if not 2 <= threshold <= shares <= MAX_SHARES:
        raise ShamirError(f"need 2 <= threshold <= shares <= {MAX_SHARES}, "
                          f"got {threshold} of {shares}")
    draw = random_bytes if callable(random_bytes) else secrets.token_bytes
    ys = [bytearray(len(secret)) for _ in range(shares)]
    for position, byte in enumerate(secret):
        coefficients = [byte, *draw(threshold - 1)]
        for index in range(shares):
            ys[index][position] = _evaluate(coefficients, index + 1)
    return [(index + 1, bytes(y)) for index, y in enumerate(ys)]


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret the given shares (x, y) interpolate to at x = 0.

    Needs at least `threshold` shares of one split, with distinct x; with fewer, or with a
    damaged share, the result is some other value and no error is raised."""
    if len(shares) < 2:
        raise ShamirError("at least two shares are needed")
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs) or not all(1 <= x <= MAX_SHARES for x in xs):
        raise ShamirError("shares need distinct x between 1 and 255")
    length = len(shares[0][1])
    if length == 0 or any(len(y) != length for _, y in shares):
        raise ShamirError("the shares differ in length")
    # Lagrange basis at 0: l_i(0) = prod_{j != i} x_j / (x_j - x_i); minus is xor.
    weights = []
    for i, xi in enumerate(xs):
        weight = 1
        for j, xj in enumerate(xs):
            if i != j:
                weight = gf_mul(weight, gf_div(xj, xj ^ xi))
        weights.append(weight)
    secret = bytearray(length)
    for weight, (_, y) in zip(weights, shares, strict=True):
        for position in range(length):
            secret[position] ^= gf_mul(weight, y[position])
    return bytes(secret)
