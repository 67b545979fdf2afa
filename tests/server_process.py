"""The server as an operator runs it: `python -m siprec_server ...` in a child process, with its
configuration in the environment."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

PYTHON = sys.executable


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`siprec-server run` in a child process; start() returns once it says where it listens."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.banner = ""
        """What the server printed on stdout up to and including its "SIP on" line."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "siprec_server", "run",
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        seen = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    seen += line  # e.g. the bootstrap administrator's password, on first start
                    if b"SIP on" in line:
                        break
                    if not line:
                        raise EOFError
        except (TimeoutError, EOFError):
            if self.proc.returncode is None:
                self.proc.kill()
            _out, err = await self.proc.communicate()
            raise AssertionError(f"server did not start: {seen!r} {err[-3000:]!r}") from None
        self.banner = seen.decode()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def run_cli(env: dict[str, str], *args: str, stdin: bytes | None = None,
                  timeout: float = 60) -> tuple[int, str, str]:
    """One `siprec-server` command; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "siprec_server", *args, env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode or 0, out.decode(), err.decode()
