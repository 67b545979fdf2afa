"""SIPp, the tool SBC vendors and operators load-test SIP with, plays the SRC against a real
server (loopback UDP/TCP, its own PostgreSQL database); afterwards PostgreSQL must hold what a
correct SRS stores. The scenarios live in sipp_scenarios/.

SIPp runs as a child process started with asyncio.create_subprocess_exec: the server under test
runs in this test's own event loop and must keep serving while we wait for SIPp to exit.
"""

from __future__ import annotations

import asyncio
import csv
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from siprec_server.app import RunningServer
from storage import recordings
from tests.integration.conftest import sip_address
from tests.integration.test_sip_errors import own_server

SCENARIOS = Path(__file__).resolve().parents[2] / "sipp_scenarios"
SIPP = shutil.which("sipp")

pytestmark = pytest.mark.skipif(SIPP is None, reason="SIPp not installed (make test installs it)")


@pytest.fixture
async def server(db_dsn: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    """conftest's server on an RTP port range nobody else on this machine holds: the load run
    takes ~20 port pairs at a time and must not trip over other processes' sockets."""
    async with own_server(db_dsn, data_dir, rtp_ports=200) as srv:
        yield srv


@dataclass(frozen=True)
class SippRun:
    returncode: int
    successful: int
    failed: int
    errors: str
    """SIPp's error log (-trace_err): every unexpected message and failed check."""
    messages: str
    """The message trace (-trace_msg), when asked for."""

    def explain(self) -> str:
        tail = self.messages[-6000:]
        return (f"sipp exit {self.returncode}, {self.successful} successful, {self.failed} failed"
                f"\n--- errors ---\n{self.errors[-6000:]}\n--- messages (tail) ---\n{tail}")


async def run_sipp(
    srv: RunningServer,
    scenario: str,
    tmp_path: Path,
    *,
    transport: str = "udp",
    calls: int = 1,
    rate: int = 10,
    timeout_s: int = 20,
    trace_messages: bool = True,
    extra: tuple[str, ...] = (),
) -> SippRun:
    """Run one scenario to its end against `srv`; SIPp ends by itself on -timeout."""
    assert SIPP is not None
    host, port = sip_address(srv, "tcp" if transport == "tcp" else "udp")
    name = Path(scenario).stem
    error_file = tmp_path / f"{name}_errors.log"
    stat_file = tmp_path / f"{name}_stats.csv"
    message_file = tmp_path / f"{name}_messages.log"
    args = [
        "-sf", str(SCENARIOS / scenario),
        "-i", "127.0.0.1",
        "-t", "t1" if transport == "tcp" else "u1",
        "-m", str(calls),
        "-r", str(rate),
        "-nostdin",
        "-timeout", f"{timeout_s}s",
        "-timeout_error",
        "-trace_err", "-error_file", str(error_file),
        "-trace_stat", "-stf", str(stat_file), "-fd", "1",
    ]
    if trace_messages:
        args += ["-trace_msg", "-message_file", str(message_file)]
    args += [*extra, f"{host}:{port}"]
    process = await asyncio.create_subprocess_exec(
        SIPP, *args,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s + 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    successful, failed = _final_counts(stat_file)
    errors = error_file.read_text(errors="replace") if error_file.exists() else ""
    errors += stderr.decode(errors="replace")
    # Bytes as sent: CRLF line ends kept (read_text would turn them into LF).
    messages = message_file.read_bytes().decode("latin-1") if message_file.exists() else ""
    return SippRun(process.returncode or 0, successful, failed, errors, messages)


def _final_counts(stat_file: Path) -> tuple[int, int]:
    """SuccessfulCall(C) and FailedCall(C) of the last line SIPp wrote in its -trace_stat CSV."""
    if not stat_file.exists():
        return 0, 0
    rows = list(csv.DictReader(stat_file.read_text().splitlines(), delimiter=";"))
    if not rows:
        return 0, 0
    last = rows[-1]
    return int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"])


async def recordings_of(srv: RunningServer) -> list[dict[str, Any]]:
    rows = await srv.db.fetch("SELECT id FROM recordings ORDER BY started_at")
    out = []
    for row in rows:
        recording = await recordings.get_recording(srv.db, row["id"])
        assert recording is not None
        out.append(recording)
    return out


async def settled(srv: RunningServer, count: int, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The recordings once `count` of them exist and none is still open (offered/recording)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = await srv.db.fetch("SELECT state FROM recordings")
        if len(rows) >= count and all(r["state"] not in ("offered", "recording") for r in rows):
            return await recordings_of(srv)
        if loop.time() > deadline:
            states = [r["state"] for r in rows]
            raise AssertionError(f"expected {count} settled recordings, have {states}")
        await asyncio.sleep(0.05)


def sent_requests(trace: str) -> list[bytes]:
    """The requests SIPp put on the wire, as bytes, from its -trace_msg log."""
    out = []
    for block in trace.split("-" * 47)[1:]:
        header, _, message = block.partition("\n\n")
        if " message sent " in header:
            out.append(message.encode("latin-1"))
    return out


def check_two_party_call(row: dict[str, Any]) -> None:
    """What siprec_call.xml / load.xml describe: two parties, each sending one labelled stream."""
    assert row["state"] == "complete"
    assert row["end_reason"] == "bye"
    assert row["ended_at"] is not None and row["answered_at"] is not None
    participants = {p["participant_id"].split("-")[0]: p for p in row["participants"]}
    assert set(participants) == {"caller", "agent"}
    assert participants["caller"]["aor"] == "sip:+4930123456@pbx.example.com"
    assert participants["agent"]["name"] == "Agent 42"
    assert all(p["present"] for p in participants.values())
    streams = row["streams"]
    assert [(s["m_index"], s["label"], s["accepted"]) for s in streams] == [
        (0, "1", True), (1, "2", True)]
    assert [s["codec"] for s in streams] == ["PCMU/8000", "PCMU/8000"]
    assert [s["telephone_event"] for s in streams] == [101, 101]
    senders = [[p.split("-")[0] for p in s["senders"]] for s in streams]
    assert senders == [["caller"], ["agent"]]
    assert len({s["local_port"] for s in streams}) == 2, "one RTP port per stream"
    assert len(row["metadata_events"]) == 1
    assert row["metadata_events"][0]["sip_method"] == "INVITE"
    assert row["metadata_events"][0]["datamode"] == "complete"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_siprec_call_is_recorded_complete(
    server: RunningServer, tmp_path: Path, transport: str
) -> None:
    run = await run_sipp(server, "siprec_call.xml", tmp_path, transport=transport)
    assert run.returncode == 0 and run.successful == 1 and run.failed == 0, run.explain()
    [row] = await settled(server, 1)
    check_two_party_call(row)
    assert row["transport"] == transport
    assert server.recorder.active_sessions == 0
    # The [len] of the multipart body is exact: the close delimiter ends the counted bytes.
    invite = next(m for m in sent_requests(run.messages) if m.startswith(b"INVITE "))
    head, _, body = invite.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    assert body[:length].endswith(b"--sipp-siprec-boundary--\r\n")
    assert row["call_id"].encode() in head


async def test_sipp_cancel_before_answer_gets_487(server: RunningServer, tmp_path: Path) -> None:
    calls = 6
    run = await run_sipp(server, "cancel.xml", tmp_path, calls=calls, rate=20)
    assert run.returncode == 0 and run.successful == calls and run.failed == 0, run.explain()
    rows = await settled(server, calls)
    assert len(rows) == calls
    outcomes = [(r["state"], r["end_reason"]) for r in rows]
    # The 487 path leaves a failed, cancelled recording; a 200 that won the race a complete one.
    assert set(outcomes) <= {("failed", "cancelled"), ("complete", "bye")}, outcomes
    cancelled = outcomes.count(("failed", "cancelled"))
    assert cancelled >= 1, f"the 487 path was never taken: {outcomes}"
    assert run.messages.count("SIP/2.0 487 Request Terminated") == cancelled
    for row in rows:
        assert row["ended_at"] is not None
        if row["state"] == "failed":
            assert row["answered_at"] is None and row["dialog_id"] is None
    assert server.recorder.active_sessions == 0


async def test_sipp_options_keepalive_advertises_siprec(
    server: RunningServer, tmp_path: Path
) -> None:
    # The header checks are <ereg check_it="true"> in options.xml: a miss fails the SIPp call.
    run = await run_sipp(server, "options.xml", tmp_path, calls=3)
    assert run.returncode == 0 and run.successful == 3 and run.failed == 0, run.explain()
    assert await server.db.fetchval("SELECT count(*) FROM recordings") == 0


async def test_sipp_reinvite_with_partial_metadata_adds_supervisor(
    server: RunningServer, tmp_path: Path
) -> None:
    run = await run_sipp(server, "reinvite_metadata.xml", tmp_path)
    assert run.returncode == 0 and run.successful == 1 and run.failed == 0, run.explain()
    [row] = await settled(server, 1)
    assert row["state"] == "complete"
    events = row["metadata_events"]
    assert [(e["sip_method"], e["datamode"]) for e in events] == [
        ("INVITE", "complete"), ("INVITE", "partial")]
    participants = {p["participant_id"].split("-")[0]: p for p in row["participants"]}
    assert set(participants) == {"caller", "agent", "supervisor"}
    assert participants["supervisor"]["aor"] == "sip:supervisor7@cc.example.com"
    assert participants["supervisor"]["name"] == "Supervisor 7"
    assert all(p["present"] for p in participants.values())
    senders = [[p.split("-")[0] for p in s["senders"]] for s in row["streams"]]
    assert senders == [["caller"], ["agent"]], "a listener sends nothing"
    assert [s["label"] for s in row["streams"]] == ["1", "2"]


async def test_sipp_update_with_metadata_only_records_transfer(
    server: RunningServer, tmp_path: Path
) -> None:
    run = await run_sipp(server, "update_metadata.xml", tmp_path)
    assert run.returncode == 0 and run.successful == 1 and run.failed == 0, run.explain()
    [row] = await settled(server, 1)
    assert row["state"] == "complete"
    events = row["metadata_events"]
    assert [(e["sip_method"], e["datamode"]) for e in events] == [
        ("INVITE", "complete"), ("UPDATE", "partial")]
    participants = {p["participant_id"].split("-")[0]: p for p in row["participants"]}
    assert set(participants) == {"caller", "agent", "agent17"}
    assert participants["agent"]["present"] is False
    assert participants["agent"]["left_at"] is not None
    assert participants["agent17"]["present"] is True
    assert participants["agent17"]["name"] == "Agent 17"
    senders = {s["label"]: sorted(p.split("-")[0] for p in s["senders"]) for s in row["streams"]}
    assert senders["1"] == ["caller"]
    # A channel's history keeps who was heard on it: agent 42 before the transfer, 17 after.
    assert senders["2"] == ["agent", "agent17"]


async def test_sipp_load_200_calls_all_recorded(server: RunningServer, tmp_path: Path) -> None:
    calls = 200
    run = await run_sipp(server, "load.xml", tmp_path, calls=calls, rate=20, timeout_s=30,
                         trace_messages=False)
    assert run.returncode == 0, run.explain()
    assert (run.successful, run.failed) == (calls, 0), run.explain()
    rows = await server.db.fetch("SELECT state, end_reason FROM recordings")
    deadline = asyncio.get_running_loop().time() + 5
    while any(r["state"] != "complete" for r in rows) and (
            asyncio.get_running_loop().time() < deadline):
        await asyncio.sleep(0.1)
        rows = await server.db.fetch("SELECT state, end_reason FROM recordings")
    assert len(rows) == calls
    assert {(r["state"], r["end_reason"]) for r in rows} == {("complete", "bye")}
    per_call = await server.db.fetch(
        """SELECT r.call_id,
                  (SELECT count(*) FROM participants p WHERE p.recording_id = r.id) AS parties,
                  (SELECT count(*) FROM streams s WHERE s.recording_id = r.id) AS streams,
                  (SELECT count(*) FROM metadata_events m WHERE m.recording_id = r.id) AS events
           FROM recordings r""")
    assert len({r["call_id"] for r in per_call}) == calls
    assert {(r["parties"], r["streams"], r["events"]) for r in per_call} == {(2, 2, 1)}
    assert server.recorder.active_sessions == 0
