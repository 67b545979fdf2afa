"""Master keys in a PKCS#11 token (an HSM, or SoftHSM2 for tests): each key version is an AES-256
secret key object generated inside the token as sensitive and non-extractable; data keys are
wrapped and unwrapped by the token with AES-GCM (CKM_AES_GCM, our nonce and AAD), so the wrapped
layout is the same as for keys held in memory (storage/keys.py) and the key never leaves it.

python-pkcs11 (a Cython binding maintained by the pyauth project) talks to the token's module,
e.g. /usr/lib/softhsm/libsofthsm2.so. One session per process, opened at start with the user PIN.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from storage.keys import KeyStoreError, KeyUnwrapError

__all__ = ["Pkcs11Token", "TokenError", "TokenKey"]

_TAG_BITS = 128


class TokenError(KeyStoreError):
    """The token cannot be opened, or a key in it cannot be made, found or used."""


@dataclass(eq=False)
class TokenKey:
    """A master key version that lives in the token."""

    key_id: str
    created_at: datetime
    label: str
    _key: Any = field(repr=False)
    _lock: threading.Lock = field(repr=False)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        with self._lock:
            try:
                return bytes(self._key.encrypt(data, mechanism=Mechanism.AES_GCM,
                                               mechanism_param=GCMParams(nonce, aad, _TAG_BITS)))
            except pkcs11.PKCS11Error as exc:
                raise TokenError(f"the token cannot wrap with {self.label}: "
                                 f"{type(exc).__name__}") from None

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        with self._lock:
            try:
                return bytes(self._key.decrypt(data, mechanism=Mechanism.AES_GCM,
                                               mechanism_param=GCMParams(nonce, aad, _TAG_BITS)))
            except pkcs11.PKCS11Error:
                # Tokens report a GCM tag mismatch as a generic failure.
                raise KeyUnwrapError("does not authenticate under this token key") from None


class Pkcs11Token:
    def __init__(self, module: str, token_label: str, pin: str) -> None:
        try:
            self._lib = pkcs11.lib(module)
            token = self._lib.get_token(token_label=token_label)
            self._session = token.open(rw=True, user_pin=pin)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise TokenError(f"cannot open PKCS#11 token {token_label!r} with {module}: "
                             f"{type(exc).__name__} {exc}".strip()) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def generate(self, key_id: str, label: str, created_at: datetime) -> TokenKey:
        with self._lock:
            try:
                key = self._session.generate_key(
                    KeyType.AES, 256, label=label, id=key_id.encode(), store=True,
                    template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True,
                              Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                              Attribute.WRAP: False, Attribute.UNWRAP: False})
            except pkcs11.PKCS11Error as exc:
                raise TokenError(f"the token cannot generate a key: {type(exc).__name__}") from None
        return TokenKey(key_id, created_at, label, key, self._lock)

    def find(self, key_id: str, label: str, created_at: datetime) -> TokenKey:
        with self._lock:
            try:
                key = self._session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
            except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
                raise TokenError(f"key {label!r} is not (exactly once) in the token: "
                                 f"{type(exc).__name__}") from None
            if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
                raise TokenError(f"key {label!r} in the token is extractable: refusing it")
        return TokenKey(key_id, created_at, label, key, self._lock)

    def destroy(self, label: str) -> bool:
        with self._lock:
            found = list(self._session.get_objects({Attribute.LABEL: label,
                                                    Attribute.CLASS: ObjectClass.SECRET_KEY}))
            for obj in found:
                obj.destroy()
        return bool(found)
