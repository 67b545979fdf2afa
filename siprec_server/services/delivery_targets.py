"""Where deliveries go: an SFTP directory (asyncssh) or an S3-compatible bucket (aiobotocore).
Each target takes a finished ciphertext file and a name; what it uploads is already encrypted to
the customer, so neither the transport nor the server on the other side needs to be trusted with
the content — only with its availability.

- SFTP: the server's host key is pinned in the config (no trust on first use); we log in with our
  own key. A file is written under a temporary name and renamed when complete, so the customer's
  pick-up job never sees half a file.
- S3: one PUT per object (atomic by S3's semantics).

asyncssh is EPL-2.0 (or GPL-2.0-or-later): we use it unmodified as a library installed from
PyPI, which EPL-2.0 allows in an Apache-2.0 project (its copyleft covers changes to asyncssh's own
files, which we do not make or ship).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlsplit

import asyncssh
from aiobotocore.session import get_session

from siprec_server.config import DeliveryDestination

__all__ = ["DeliveryTarget", "S3Target", "SftpTarget", "TargetError", "target_for"]

CONNECT_TIMEOUT_S = 30.0


class TargetError(RuntimeError):
    """An upload that failed (the message says where and how; it is retried)."""


class DeliveryTarget(Protocol):
    async def put(self, files: list[tuple[str, Path]]) -> None:
        """Upload every (remote name, local ciphertext file), in order."""


@dataclass(frozen=True, slots=True)
class SftpTarget:
    host: str
    port: int
    username: str
    directory: str
    host_key: str
    client_key_file: str

    @classmethod
    def of(cls, dest: DeliveryDestination) -> SftpTarget:
        parts = urlsplit(dest.url)
        if not parts.hostname or not parts.username:
            raise TargetError("sftp url: sftp://user@host[:port]/directory")
        return cls(parts.hostname, parts.port or 22, unquote(parts.username),
                   unquote(parts.path) or ".", dest.host_key, dest.client_key_file)

    async def put(self, files: list[tuple[str, Path]]) -> None:
        try:
            trusted = [asyncssh.import_public_key(self.host_key)]
            client_key = asyncssh.read_private_key(self.client_key_file)
        except (asyncssh.KeyImportError, OSError) as exc:
            raise TargetError(f"sftp keys unusable: {exc}") from None
        try:
            async with asyncssh.connect(
                    self.host, self.port, username=self.username,
                    known_hosts=(trusted, [], []), client_keys=[client_key],
                    agent_path=None, password=None, kbdint_auth=False,
                    connect_timeout=CONNECT_TIMEOUT_S) as conn, \
                    conn.start_sftp_client() as sftp:
                for name, path in files:
                    remote = str(PurePosixPath(self.directory) / name)
                    partial = remote + ".part"
                    await sftp.put(str(path), partial)
                    if await sftp.exists(remote):
                        await sftp.remove(remote)  # a repeated attempt replaces its own file
                    await sftp.rename(partial, remote)
        except (OSError, asyncssh.Error) as exc:
            raise TargetError(f"sftp {self.host}:{self.port}: {type(exc).__name__}: "
                              f"{str(exc)[:300]}") from None


@dataclass(frozen=True, slots=True)
class S3Target:
    bucket: str
    prefix: str
    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str

    @classmethod
    def of(cls, dest: DeliveryDestination) -> S3Target:
        parts = urlsplit(dest.url)
        if not parts.netloc:
            raise TargetError("s3 url: s3://bucket[/prefix]")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parts.netloc, prefix, dest.endpoint, dest.region, dest.access_key_id,
                   dest.secret_access_key)

    async def put(self, files: list[tuple[str, Path]]) -> None:
        session = get_session()
        try:
            async with session.create_client(
                    "s3", endpoint_url=self.endpoint or None, region_name=self.region,
                    aws_access_key_id=self.access_key_id or None,
                    aws_secret_access_key=self.secret_access_key or None) as client:
                for name, path in files:
                    await client.put_object(Bucket=self.bucket, Key=self.prefix + name,
                                            Body=path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - botocore's errors have no common root
            raise TargetError(f"s3 {self.bucket}: {type(exc).__name__}: "
                              f"{str(exc)[:300]}") from None


def target_for(dest: DeliveryDestination) -> DeliveryTarget:
    if dest.kind == "sftp":
        return SftpTarget.of(dest)
    if dest.kind == "s3":
        return S3Target.of(dest)
    raise TargetError(f"unknown destination kind {dest.kind!r}")
