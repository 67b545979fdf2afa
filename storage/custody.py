"""Key custody: where the master keys come from, how they are versioned, and how they end.

Three custodies fill the process's one `KeyRing` (storage/keys.py):

- ``local`` (development, `make run`): keys are files under data_dir/keys (0600 in 0700). Loud at
  start; a copy of data_dir holds the keys, so it is no defence against a stolen backup.
- ``shamir`` (production, sealed start): a random 256-bit master key exists only in memory. It is
  split t-of-n (storage/shamir.py) in a dual-control ceremony; each share goes once to its
  custodian, encrypted to them (storage/key_shares.py). After a restart the server is sealed until
  t custodians submit their shares. Every submitted share is checked against the digest kept for
  it, and the rebuilt key against the commitment stored with its version, before it is used.
  While a rotation runs, the retiring version is kept sealed under the new one, so the new
  version's shares unseal both; when the re-wrap ends, the retiring version is destroyed.
- ``pkcs11``: each version is a non-extractable AES key in a PKCS#11 token (storage/pkcs11_keys.py);
  data keys are wrapped and unwrapped inside the token.

Versions (table master_key_versions) move active -> retiring -> destroyed (a rotation) and carry
their creation and activation times and cryptoperiod. Destroying a version requires that no data
key is still wrapped under it; it removes the key material from wherever the custody keeps it.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from storage import key_versions as kv
from storage.key_shares import Recipient, Share, ShareError, seal_share, share_digest
from storage.keys import (
    KeyEncryptionKey,
    KeyRing,
    KeyStoreError,
    KeyUnwrapError,
    LocalKeyStore,
    MasterKey,
    key_commitment,
)
from storage.shamir import MAX_SHARES, combine, split

__all__ = [
    "MAX_CUSTODIANS",
    "Custodian",
    "CustodyError",
    "KeyCustody",
    "LocalCustody",
    "ShamirCustody",
    "ShareRefused",
    "TokenCustody",
    "UnsealProgress",
]

MAX_CUSTODIANS = 10
_SEAL_CONTEXT = b"siprec sealed master key v1"
_NONCE = 12


class CustodyError(KeyStoreError):
    """A custody operation that cannot be done in this state or with these values."""


class ShareRefused(CustodyError):
    """A submitted share that is not one the server handed out for the key to unseal."""


@dataclass(frozen=True, slots=True)
class Custodian:
    """Who receives one share, and how it is encrypted to them."""

    user_id: UUID
    username: str
    recipient: Recipient


@dataclass(frozen=True, slots=True)
class UnsealProgress:
    sealed: bool
    submitted: int
    threshold: int
    version_id: str | None
    custodian_id: UUID | None = None
    """Whose share was just accepted."""


@dataclass(frozen=True, slots=True)
class NewVersion:
    version: kv.KeyVersion
    previous: str | None
    """The version that became retiring, if any."""


def seal_master(under: KeyEncryptionKey, key: MasterKey) -> bytes:
    """`key` encrypted under `under` (a retiring version kept for the one set of shares)."""
    nonce = secrets.token_bytes(_NONCE)
    aad = _SEAL_CONTEXT + key.key_id.encode() + b"|" + under.key_id.encode()
    return nonce + under.encrypt(nonce, key.key, aad)


def open_master(under: KeyEncryptionKey, sealed: bytes, key_id: str,
                created_at: datetime) -> MasterKey:
    aad = _SEAL_CONTEXT + key_id.encode() + b"|" + under.key_id.encode()
    key = under.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)
    master = MasterKey.from_key(key, created_at)
    if master.key_id != key_id:
        raise KeyUnwrapError(f"sealed key of version {key_id} opens to another key")
    return master


class KeyCustody:
    """What every custody does; the ring it fills exists (sealed) before any key does."""

    mode = "none"

    def __init__(self, ring: KeyRing, *, cryptoperiod_days: int = 365) -> None:
        self.ring = ring
        self.cryptoperiod_days = cryptoperiod_days
        self.created_first: str | None = None
        """The version id a start created (local and pkcs11 create their first key)."""

    @property
    def sealed(self) -> bool:
        return self.ring.is_sealed

    @property
    def needs_init(self) -> bool:
        """No master key exists yet: an init ceremony must create one."""
        return False

    def progress(self) -> UnsealProgress:
        version = None if self.ring.is_sealed else self.ring.current.key_id
        return UnsealProgress(self.ring.is_sealed, 0, 0, version)

    async def open(self, db: asyncpg.Pool, now: datetime) -> None:
        """At start: load what can be loaded without custodians."""
        raise NotImplementedError

    async def submit_share(self, db: asyncpg.Pool, text: str) -> UnsealProgress:
        raise CustodyError(f"the {self.mode} custody is not unsealed with shares")

    async def new_version(self, db: asyncpg.Pool, now: datetime, *,
                          custodians: Sequence[Custodian] = (),
                          threshold: int | None = None) -> NewVersion:
        """Create the next version and make it active at once (the previous one retiring)."""
        raise NotImplementedError

    async def destroy(self, db: asyncpg.Pool, version_id: str, now: datetime) -> None:
        """Destroy a retiring version whose data keys were all re-wrapped."""
        async with db.acquire() as conn, conn.transaction():
            version = await kv.get_version(conn, version_id)
            if version is None:
                raise CustodyError(f"no key version {version_id}")
            if version.state == "destroyed":
                return
            if version.state == "active":
                raise CustodyError("the active version cannot be destroyed: rotate first")
            # Nobody may add a data key under it between the count and the destruction.
            await conn.execute("LOCK TABLE recording_keys IN SHARE ROW EXCLUSIVE MODE")
            left = await conn.fetchval(
                "SELECT count(*) FROM recording_keys WHERE master_key_id = $1", version_id)
            if left:
                raise CustodyError(f"{left} data keys are still wrapped under {version_id}")
            sealed_signing = await conn.fetchval(
                "SELECT count(*) FROM signing_keys WHERE sealed_under = $1", version_id)
            if sealed_signing:
                raise CustodyError(f"{sealed_signing} signing keys are still sealed under "
                                   f"{version_id}")
            await kv.mark_destroyed(conn, version_id, now)
            await self._destroy_material(version)
        self._forget(version_id)

    async def _destroy_material(self, version: kv.KeyVersion) -> None:
        """Remove the key from wherever this custody keeps it (inside the transaction)."""

    def _forget(self, version_id: str) -> None:
        if self.ring.is_sealed:
            return
        remaining = {k: v for k, v in self.ring.by_id.items() if k != version_id}
        self.ring.load(self.ring.current, remaining)

    def _add(self, key: KeyEncryptionKey) -> None:
        keys: dict[str, KeyEncryptionKey] = {} if self.ring.is_sealed else dict(self.ring.by_id)
        keys[key.key_id] = key
        self.ring.load(key, keys)


# ------------------------------------------------------------------------------ local


class LocalCustody(KeyCustody):
    mode = "local"

    def __init__(self, ring: KeyRing, store: LocalKeyStore, *,
                 cryptoperiod_days: int = 365) -> None:
        super().__init__(ring, cryptoperiod_days=cryptoperiod_days)
        self.store = store

    async def open(self, db: asyncpg.Pool, now: datetime) -> None:
        files = {k.key_id: k for k in self.store.load()}
        versions = {v.id: v for v in await kv.list_versions(db)}
        live_local = [v for v in versions.values() if v.custody == "local" and v.live]
        if not files and not live_local:
            master = self.store.create(now)
            files[master.key_id] = master
            self.created_first = master.key_id
        async with db.acquire() as conn, conn.transaction():
            has_active = any(v.state == "active" for v in versions.values())
            # Key files the table does not know (a data_dir from before key versions): the
            # newest becomes active when nothing is, the others are retiring.
            unknown = sorted((k for k in files.values() if k.key_id not in versions),
                             key=lambda k: (k.created_at, k.key_id))
            for index, master in enumerate(unknown):
                newest = not has_active and index == len(unknown) - 1
                version = await kv.insert_version(
                    conn, version_id=master.key_id, custody="local", now=master.created_at,
                    cryptoperiod_days=self.cryptoperiod_days,
                    commitment=key_commitment(master.key),
                    state="active" if newest else "retiring")
                versions[version.id] = version
        live = [v for v in versions.values() if v.live]
        missing = [v.id for v in live if v.id not in files]
        if missing:
            raise CustodyError(
                f"key versions {', '.join(missing)} are live but their key files are missing "
                f"from {self.store.directory}")
        active = next((v for v in live if v.state == "active"), None)
        if active is None:
            raise CustodyError("no active master key version")
        self.ring.load(files[active.id], {v.id: files[v.id] for v in live})

    async def new_version(self, db: asyncpg.Pool, now: datetime, *,
                          custodians: Sequence[Custodian] = (),
                          threshold: int | None = None) -> NewVersion:
        previous = None if self.ring.is_sealed else self.ring.current.key_id
        master = self.store.create(now)
        async with db.acquire() as conn, conn.transaction():
            version = await kv.insert_version(
                conn, version_id=master.key_id, custody="local", now=now,
                cryptoperiod_days=self.cryptoperiod_days, commitment=key_commitment(master.key))
        self._add(master)
        return NewVersion(version, previous)

    async def _destroy_material(self, version: kv.KeyVersion) -> None:
        self.store.destroy(version.id)


# ------------------------------------------------------------------------------ shamir


class ShamirCustody(KeyCustody):
    mode = "shamir"

    def __init__(self, ring: KeyRing, *, cryptoperiod_days: int = 365) -> None:
        super().__init__(ring, cryptoperiod_days=cryptoperiod_days)
        self._active: kv.KeyVersion | None = None
        self._submitted: dict[int, Share] = {}
        self._lock = asyncio.Lock()

    @property
    def needs_init(self) -> bool:
        return self._active is None

    def progress(self) -> UnsealProgress:
        if self._active is None:
            return UnsealProgress(True, 0, 0, None)
        return UnsealProgress(self.ring.is_sealed, len(self._submitted),
                              self._active.threshold or 0, self._active.id)

    async def open(self, db: asyncpg.Pool, now: datetime) -> None:
        self.ring.seal()
        self._submitted.clear()
        versions = await kv.list_versions(db)
        self._active = next((v for v in versions if v.state == "active"), None)
        if self._active is not None and self._active.custody != "shamir":
            raise CustodyError(
                f"the active key version {self._active.id} is kept by the "
                f"{self._active.custody} custody, not by shares: rotate to move it")

    async def submit_share(self, db: asyncpg.Pool, text: str) -> UnsealProgress:
        async with self._lock:
            return await self._submit(db, text)

    async def _submit(self, db: asyncpg.Pool, text: str) -> UnsealProgress:
        active = self._active
        if active is None:
            raise CustodyError("no master key exists yet: run the init ceremony")
        if not self.ring.is_sealed:
            return self.progress()
        try:
            share = Share.parse(text)
        except ShareError as exc:
            raise ShareRefused(str(exc)) from None
        if share.key_id != active.id:
            other = await kv.get_version(db, share.key_id)
            if other is None:
                raise ShareRefused("this is not a share of any key version of this server")
            raise ShareRefused(f"this share belongs to key version {other.id} ({other.state}); "
                               f"unsealing needs shares of the active version {active.id}")
        records = {r.x: r for r in await kv.shares_of(db, active.id)}
        record = records.get(share.x)
        if (record is None or share.threshold != active.threshold
                or not hmac.compare_digest(record.digest,
                                           share_digest(share.key_id, share.x, share.y))):
            raise ShareRefused("this share is not the one handed out (altered or damaged)")
        if share.x in self._submitted:
            raise ShareRefused(f"share {share.x} was already submitted")
        self._submitted[share.x] = share
        threshold = active.threshold or 0
        if len(self._submitted) < threshold:
            return UnsealProgress(True, len(self._submitted), threshold, active.id,
                                  record.custodian_id)
        key = combine([(s.x, s.y) for s in self._submitted.values()])
        self._submitted.clear()
        if active.commitment is None or not hmac.compare_digest(key_commitment(key),
                                                                active.commitment):
            raise CustodyError("the shares do not rebuild the committed key; submit again")
        master = MasterKey.from_key(key, active.created_at)
        keys: dict[str, KeyEncryptionKey] = {master.key_id: master}
        for version in await kv.list_versions(db):
            if version.live and version.id != active.id:
                if version.sealed_key is None or version.sealed_by != active.id:
                    raise CustodyError(f"retiring version {version.id} is not sealed under "
                                       f"{active.id}")
                keys[version.id] = open_master(master, version.sealed_key, version.id,
                                               version.created_at)
        self.ring.load(master, keys)
        return UnsealProgress(False, threshold, threshold, active.id, record.custodian_id)

    async def new_version(self, db: asyncpg.Pool, now: datetime, *,
                          custodians: Sequence[Custodian] = (),
                          threshold: int | None = None) -> NewVersion:
        if self._active is not None and self.ring.is_sealed:
            raise CustodyError("sealed: unseal before creating a key version")
        n = len(custodians)
        if threshold is None or not 2 <= threshold <= n <= min(MAX_CUSTODIANS, MAX_SHARES):
            raise CustodyError(f"need 2 <= threshold <= custodians <= {MAX_CUSTODIANS}")
        if len({c.user_id for c in custodians}) != n:
            raise CustodyError("each custodian receives one share")
        master = MasterKey.generate(now)
        pieces = split(master.key, n, threshold)
        shares = [Share(master.key_id, threshold, x, y) for x, y in pieces]
        loop = asyncio.get_running_loop()
        # gpg runs as a subprocess: off the event loop.
        envelopes = [await loop.run_in_executor(None, seal_share, c.recipient, s)
                     for c, s in zip(custodians, shares, strict=True)]
        previous = None if self.ring.is_sealed else self.ring.current.key_id
        retiring = [] if self.ring.is_sealed else [
            k for k in self.ring.by_id.values()]
        async with db.acquire() as conn, conn.transaction():
            version = await kv.insert_version(
                conn, version_id=master.key_id, custody="shamir", now=now,
                cryptoperiod_days=self.cryptoperiod_days, commitment=key_commitment(master.key),
                threshold=threshold, shares=n)
            for custodian, share, envelope in zip(custodians, shares, envelopes, strict=True):
                await kv.insert_share(
                    conn, version_id=version.id, x=share.x, custodian_id=custodian.user_id,
                    digest=share_digest(share.key_id, share.x, share.y),
                    recipient_kind=custodian.recipient.kind,
                    recipient=custodian.recipient.public,
                    fingerprint=custodian.recipient.fingerprint, envelope=envelope)
            for old in retiring:
                if not isinstance(old, MasterKey):
                    raise CustodyError(f"version {old.key_id} cannot be sealed under shares")
                await kv.seal_version_under(conn, old.key_id, seal_master(master, old),
                                            master.key_id)
        self._active = version
        self._add(master)
        return NewVersion(version, previous)


# ------------------------------------------------------------------------------ pkcs11


class TokenCustody(KeyCustody):
    mode = "pkcs11"

    def __init__(self, ring: KeyRing, token: Any, *, cryptoperiod_days: int = 365) -> None:
        super().__init__(ring, cryptoperiod_days=cryptoperiod_days)
        self.token = token
        """A storage.pkcs11_keys.Pkcs11Token."""

    async def open(self, db: asyncpg.Pool, now: datetime) -> None:
        versions = [v for v in await kv.list_versions(db) if v.live]
        if not versions:
            await self.new_version(db, now)
            self.created_first = self.ring.current.key_id
            return
        keys: dict[str, KeyEncryptionKey] = {}
        for version in versions:
            if version.custody != "pkcs11" or version.token_label is None:
                raise CustodyError(f"key version {version.id} is kept by the {version.custody} "
                                   "custody, not by the token")
            keys[version.id] = self.token.find(version.id, version.token_label,
                                               version.created_at)
        active = next(v for v in versions if v.state == "active")
        self.ring.load(keys[active.id], keys)

    async def new_version(self, db: asyncpg.Pool, now: datetime, *,
                          custodians: Sequence[Custodian] = (),
                          threshold: int | None = None) -> NewVersion:
        previous = None if self.ring.is_sealed else self.ring.current.key_id
        version_id = secrets.token_hex(8)
        label = f"siprec-master-{version_id}"
        key = self.token.generate(version_id, label, now)
        try:
            async with db.acquire() as conn, conn.transaction():
                version = await kv.insert_version(
                    conn, version_id=version_id, custody="pkcs11", now=now,
                    cryptoperiod_days=self.cryptoperiod_days, token_label=label)
        except BaseException:
            self.token.destroy(label)
            raise
        self._add(key)
        return NewVersion(version, previous)

    async def _destroy_material(self, version: kv.KeyVersion) -> None:
        if version.token_label:
            self.token.destroy(version.token_label)

