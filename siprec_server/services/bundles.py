"""Encrypting a subject-access bundle as it is written: the ZIP streams straight into an
encryptor whose only output is ciphertext on disk (ARCHITECTURE principle 1: no plaintext file,
not even a temporary one).

Three ways to encrypt to the requester:
- a passphrase: age v1 (age-encryption.org/v1, the scrypt recipient), written here with
  `cryptography` because no maintained Python binding streams passphrase encryption (pyrage's
  passphrase API takes and returns whole byte strings). The format is small and fully
  specified; the tests open our files with rage (pyrage) and the age command line.
- an OpenPGP public key: `gpg --encrypt` fed through a pipe, in a throwaway home directory
  holding only that public key.
- an X.509 certificate: `openssl cms -encrypt -stream` (CMS AuthEnvelopedData, AES-256-GCM)
  fed through a pipe.

The passphrase is used once, when the request is made: the age header (the file key wrapped
under scrypt of the passphrase) is computed then, and the file key itself is kept only wrapped
by the master key, so a job resumed on another node can write the same kind of file and the
passphrase is never stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "AgeWriter",
    "BundleEncryptor",
    "EncryptorError",
    "RecipientError",
    "SubprocessEncryptor",
    "age_passphrase_header",
    "check_openpgp_key",
    "check_x509_certificate",
    "open_encryptor",
]

AGE_CHUNK = 64 * 1024
AGE_INTRO = b"age-encryption.org/v1\n"
DEFAULT_SCRYPT_WORK_FACTOR = 18  # age's own default: about a second on a server core
MAX_PUBLIC_KEY = 64 * 1024


class RecipientError(ValueError):
    """A passphrase, OpenPGP key or certificate the bundle cannot be encrypted to."""


class EncryptorError(RuntimeError):
    """The encryptor failed while writing (its message says how)."""


class BundleEncryptor(Protocol):
    """A write-only sink whose output is ciphertext; `close` finishes the file."""

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def age_passphrase_header(passphrase: str, file_key: bytes,
                          work_factor: int = DEFAULT_SCRYPT_WORK_FACTOR) -> bytes:
    """The age v1 header of a file whose `file_key` is wrapped under scrypt(`passphrase`)."""
    if not isinstance(passphrase, str) or not 8 <= len(passphrase) <= 1024:
        raise RecipientError("passphrase: 8 to 1024 characters")
    if len(file_key) != 16:
        raise ValueError("an age file key is 16 bytes")
    salt = secrets.token_bytes(16)
    key = Scrypt(b"age-encryption.org/v1/scrypt" + salt, 32, 2**work_factor, 8, 1).derive(
        passphrase.encode("utf-8"))
    body = ChaCha20Poly1305(key).encrypt(bytes(12), file_key, None)
    header = (AGE_INTRO + b"-> scrypt " + _b64(salt) + b" " + str(work_factor).encode()
              + b"\n" + _b64(body) + b"\n---")
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    return header + b" " + _b64(mac) + b"\n"


class AgeWriter:
    """The age v1 payload: the header, a 16-byte nonce, then ChaCha20-Poly1305 chunks of 64 KiB
    (STREAM; the last one flagged), written to `sink` as plaintext arrives. At most one chunk
    of plaintext is ever held, in memory."""

    def __init__(self, sink: BinaryIO, header: bytes, file_key: bytes) -> None:
        nonce = secrets.token_bytes(16)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._sink = sink
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        sink.write(header)
        sink.write(nonce)

    def _seal(self, chunk: bytes, last: bool) -> None:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._sink.write(self._aead.encrypt(nonce, chunk, None))
        self._counter += 1

    def write(self, data: bytes) -> int:
        if self._closed:
            raise ValueError("write to a closed AgeWriter")
        self._buffer += data
        # A full chunk is sealed only once more data follows: the last chunk must be flagged.
        while len(self._buffer) > AGE_CHUNK:
            self._seal(bytes(self._buffer[:AGE_CHUNK]), last=False)
            del self._buffer[:AGE_CHUNK]
        return len(data)

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()
        self._sink.flush()


class SubprocessEncryptor:
    """Plaintext into a command's standard input; its standard output is the file. The pipe
    is the only place plaintext passes (kernel memory)."""

    def __init__(self, argv: list[str], out: BinaryIO, workdir: Path | None = None) -> None:
        self._workdir = workdir
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()/abort()
        try:
            self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out,
                                             stderr=self._stderr)
        except OSError as exc:
            self._cleanup()
            raise EncryptorError(f"cannot start {argv[0]}: {exc.strerror}") from None
        assert self._process.stdin is not None
        self._stdin = self._process.stdin

    def write(self, data: bytes) -> int:
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            raise EncryptorError(self._failure()) from None
        return len(data)

    def flush(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._stdin.flush()

    def close(self) -> None:
        try:
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()
            code = self._process.wait()
            if code != 0:
                raise EncryptorError(self._failure())
        finally:
            self._cleanup()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._process.kill()
        self._process.wait()
        self._cleanup()

    def _failure(self) -> str:
        self._process.wait()
        self._stderr.seek(0)
        text = self._stderr.read(2000).decode("utf-8", "replace").strip()
        return f"encryptor exited with {self._process.returncode}: {text[:500]}"

    def _cleanup(self) -> None:
        self._stderr.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _gpg_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="siprec-gpg-"))
    home.chmod(0o700)
    return home


def check_openpgp_key(armored: str) -> str:
    """The key's fingerprint; RecipientError unless it is one OpenPGP public key that can
    encrypt."""
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in armored or len(armored) > MAX_PUBLIC_KEY:
        raise RecipientError("public_key: an ASCII-armored OpenPGP public key or a PEM X.509 "
                             "certificate")
    home = _gpg_home()
    try:
        done = subprocess.run(
            ["gpg", "--batch", "--homedir", str(home), "--with-colons", "--show-keys"],
            input=armored.encode("utf-8"), capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RecipientError(f"public_key: cannot be checked ({exc})") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    keys = [line.split(":") for line in lines if line.startswith(("pub:", "sub:"))]
    fingerprints = [line.split(":")[9] for line in lines if line.startswith("fpr:")]
    if done.returncode != 0 or not keys or not fingerprints:
        raise RecipientError("public_key: not a usable OpenPGP public key")
    if not any("e" in fields[11].lower() for fields in keys if len(fields) > 11):
        raise RecipientError("public_key: the OpenPGP key has no encryption capability")
    return fingerprints[0]


def check_x509_certificate(pem: str) -> str:
    """The certificate's SHA-256 fingerprint (hex); RecipientError unless it parses."""
    if "-----BEGIN CERTIFICATE-----" not in pem or len(pem) > MAX_PUBLIC_KEY:
        raise RecipientError("public_key: an ASCII-armored OpenPGP public key or a PEM X.509 "
                             "certificate")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise RecipientError("public_key: the X.509 certificate does not parse") from None
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom a bundle is encrypted to, as stored with the request (no secret in clear)."""

    kind: str
    """passphrase | openpgp | cms"""
    details: Mapping[str, Any]

    @property
    def suffix(self) -> str:
        return {"passphrase": ".zip.age", "openpgp": ".zip.gpg", "cms": ".zip.p7m"}[self.kind]


def open_encryptor(recipient: Recipient, out: BinaryIO,
                   file_key: bytes | None = None) -> BundleEncryptor:
    """An encryptor writing to `out` (the bundle file opened for writing); `file_key` is the
    unwrapped age file key of a passphrase recipient."""
    if recipient.kind == "passphrase":
        if file_key is None:
            raise ValueError("a passphrase bundle needs its file key")
        header = base64.b64decode(recipient.details["age_header"])
        return AgeWriter(out, header, file_key)
    workdir = _gpg_home()
    if recipient.kind == "openpgp":
        keyfile = workdir / "recipient.asc"
        keyfile.write_text(str(recipient.details["public_key"]))
        argv = ["gpg", "--batch", "--quiet", "--no-options", "--homedir", str(workdir),
                "--trust-model", "always", "--compress-algo", "none",
                "--recipient-file", str(keyfile), "--encrypt", "--output", "-"]
    elif recipient.kind == "cms":
        certfile = workdir / "recipient.pem"
        certfile.write_text(str(recipient.details["public_key"]))
        argv = ["openssl", "cms", "-encrypt", "-binary", "-stream", "-outform", "DER",
                "-aes-256-gcm", str(certfile)]
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ValueError(f"unknown recipient kind {recipient.kind!r}")
    return SubprocessEncryptor(argv, out, workdir)
