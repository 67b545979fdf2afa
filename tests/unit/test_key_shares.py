"""Shares as custodians hold them, and the envelopes they travel in, opened by the real tools:
the `age` command line and GnuPG."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from storage.key_shares import (
    Share,
    ShareError,
    parse_recipient,
    seal_share,
    share_digest,
)

SHARE = Share("0123456789abcdef", 2, 3, bytes(range(32)))


def test_share_text_round_trips_and_hides_y() -> None:
    text = SHARE.text()
    assert text.startswith("srs-share1:")
    assert Share.parse(text) == SHARE
    # Copy-paste damage that is only whitespace is harmless.
    assert Share.parse(text[:20] + "\n  " + text[20:]) == SHARE
    assert bytes(range(32)).hex() not in repr(SHARE)


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1],                                     # truncated
    lambda t: t[:15] + ("A" if t[15] != "A" else "B") + t[16:],  # one character mistyped
    lambda t: "srs-share2:" + t[11:],                     # unknown prefix
    lambda t: t + "AAAA",                                 # trailing garbage
])
def test_a_mistyped_share_is_refused_by_its_check(mutate: object) -> None:
    with pytest.raises(ShareError):
        Share.parse(mutate(SHARE.text()))  # type: ignore[operator]


def test_a_carefully_altered_share_parses_but_its_digest_differs() -> None:
    altered = Share(SHARE.key_id, SHARE.threshold, SHARE.x, bytes([1]) + SHARE.y[1:])
    assert Share.parse(altered.text()) == altered  # a valid check was recomputed
    assert share_digest(altered.key_id, altered.x, altered.y) != share_digest(
        SHARE.key_id, SHARE.x, SHARE.y)


def test_age_envelope_opens_with_the_age_command_line(tmp_path: Path) -> None:
    identity = tmp_path / "custodian.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    public = next(line.split(": ")[1] for line in identity.read_text().splitlines()
                  if line.startswith("# public key: "))
    recipient = parse_recipient({"age": public})
    envelope = seal_share(recipient, SHARE)
    assert envelope.startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    assert SHARE.text() not in envelope
    (tmp_path / "share.age").write_text(envelope)
    opened = subprocess.run(["age", "-d", "-i", str(identity), str(tmp_path / "share.age")],
                            check=True, capture_output=True, text=True).stdout
    assert Share.parse(opened) == SHARE
    assert recipient.public == public


def test_passphrase_envelope_is_age_scrypt() -> None:
    recipient = parse_recipient({"passphrase": "correct horse battery staple"})
    envelope = seal_share(recipient, SHARE)
    assert recipient.public is None and "correct horse" not in repr(recipient)
    opened = pyrage.passphrase.decrypt(envelope.encode(), "correct horse battery staple")
    assert Share.parse(opened.decode()) == SHARE
    with pytest.raises(pyrage.DecryptError):
        pyrage.passphrase.decrypt(envelope.encode(), "wrong horse battery staple")


@pytest.fixture
def gpg_home() -> Iterator[str]:
    home = tempfile.mkdtemp(prefix="test-gpg-")
    os.chmod(home, 0o700)
    try:
        subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "",
                        "--quick-gen-key", "custodian@example.com", "default", "default",
                        "never"], check=True, capture_output=True)
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True,
                       check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_openpgp_envelope_opens_with_gnupg(gpg_home: str) -> None:
    public = subprocess.run(["gpg", "--homedir", gpg_home, "--batch", "--armor", "--export",
                             "custodian@example.com"], check=True, capture_output=True,
                            text=True).stdout
    recipient = parse_recipient({"openpgp": public})
    assert len(recipient.fingerprint) == 40
    envelope = seal_share(recipient, SHARE)
    assert envelope.startswith("-----BEGIN PGP MESSAGE-----")
    opened = subprocess.run(["gpg", "--homedir", gpg_home, "--batch", "--decrypt"],
                            input=envelope, check=True, capture_output=True, text=True).stdout
    assert Share.parse(opened) == SHARE


@pytest.mark.parametrize("spec", [
    {"age": "age1notakey"}, {"openpgp": "not a key"}, {"passphrase": "short"},
    {"smoke": "signals"}, {"age": "x", "passphrase": "y"}, "age1...",
])
def test_bad_recipients_are_refused_before_any_ceremony(spec: object) -> None:
    with pytest.raises(ShareError):
        parse_recipient(spec)
