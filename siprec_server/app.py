"""The composition root: config → database → SIP + recorder + media → API; start-up and graceful
shutdown. Nothing else wires components together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import asyncpg
from aiohttp import web

from api.app import create_api
from api.auth_api import setup_identity
from api.lifecycle_api import LIFECYCLE_KEY
from api.metrics import MetricsSources, setup_metrics
from api.recordings_api import KEYS_KEY, MEDIA_KEY, setup_recordings
from api.ui import UiSettings, setup_ui
from api.views import detail_view
from siprec_server.access import AccessError, LoginPolicy
from siprec_server.config import (
    Config,
    ConfigError,
    StartupError,
    TlsConfig,
    parse_host_port,
    parse_listen,
)
from siprec_server.data_dir import DataDirLock, prepare_data_dir
from siprec_server.logs import get_logger
from siprec_server.media.dtmf_control import DtmfControl
from siprec_server.media.ports import PortAllocator
from siprec_server.media.source import RtpSourcePolicy
from siprec_server.media_service import MediaService
from siprec_server.net.sip_transport import SipEndpoint, TransportLimits
from siprec_server.net.source_policy import SourcePolicy, is_loopback
from siprec_server.recorder import Recorder, RecorderSettings
from siprec_server.services.accounts import ensure_bootstrap_admin
from siprec_server.services.database import DatabaseHandle, open_server_database
from siprec_server.services.lifecycle import LifecycleServices, build_lifecycle
from siprec_server.services.node import NodeMembership
from siprec_server.sip.agent import AgentSettings, SipAgent
from siprec_server.siprec.sdp_answer import AnswerPreferences
from storage import erasure, recordings
from storage.audit import AuditEvent, record_audit
from storage.keys import KeyRing, LocalKeyStore
from storage.nodes import NodeInUse
from storage.recording_store import RecordingStore
from storage.signing import load_or_create_signing_key
from storage.write_behind import WriteBehind

log = get_logger("app")


def node_id_of(config: Config) -> str:
    return config.server.node_id or socket.gethostname()


def advertised_address(configured: str, listen_host: str) -> str:
    """The address peers reach us on: configured, else the listen address, else a guess."""
    if configured:
        return configured
    if listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    try:
        guess = socket.gethostbyname(socket.gethostname())
    except OSError:
        guess = "127.0.0.1"
    if guess.startswith("127."):
        log.warning("advertised_address_unknown", hint="set sip.advertised_address")
        return "127.0.0.1"
    return guess


async def open_key_ring(db: asyncpg.Pool, directory: Path, node_id: str) -> KeyRing:
    """The master keys. Until the dual-control ceremony exists, a first start creates one
    under data_dir/keys (0600) — and says so in the audit trail."""
    ring, created = LocalKeyStore(directory).load_or_create(datetime.now(UTC))
    if created:
        await record_audit(
            db,
            AuditEvent(
                actor=f"node:{node_id}",
                action="key.master_created",
                target=ring.current.key_id,
                source="local-key-store",
                details={"store": "local file", "dual_control": False},
            ),
        )
        log.warning("master_key_created", key_id=ring.current.key_id,
                    note="single-operator local key; replace with the dual-control ceremony")
    return ring


def metrics_sources(recorder: Recorder, media: MediaService, sip: SipEndpoint) -> MetricsSources:
    """What /metrics exports of the running components."""
    return MetricsSources(
        active_calls=lambda: recorder.active_sessions,
        recorder=lambda: recorder.counters,
        sip_messages=lambda: sip.agent.counters,
        sip_transport=lambda: sip.counters,
        media_errors=lambda: media.counters,
        packets=media.packet_totals,
    )


@dataclass
class RunningServer:
    config: Config
    lock: DataDirLock
    database: DatabaseHandle
    node: NodeMembership
    writes: WriteBehind
    sip: SipEndpoint
    recorder: Recorder
    media: MediaService
    api_runner: web.AppRunner
    api_address: tuple[str, int]
    sip_addresses: list[tuple[str, str, int]] = field(default_factory=list)
    lifecycle: LifecycleServices | None = None

    @property
    def db(self) -> asyncpg.Pool:
        return self.database.pool

    async def stop(self) -> None:
        log.info("shutting_down")
        try:
            if self.lifecycle is not None:
                await self.lifecycle.close()
            await self.recorder.shutdown()
            await self.media.close()
            await self.api_runner.cleanup()
            await self.sip.close()
            await self.writes.close()
            await self.node.leave()
            await self.database.close()
        finally:
            self.lock.release()
        log.info("stopped")


def _tls_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """Server-side TLS 1.2+; with a CA file, mutual TLS: a client certificate it issued is
    required (an SBC without one cannot even complete the handshake)."""
    if not tls.cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:
            context.load_verify_locations(cafile=tls.ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"TLS certificate or key unusable: {exc}") from None
    return context


async def _listening(what: str, start: Awaitable[None]) -> None:
    """A listener that cannot be opened is one line for the operator, not a traceback."""
    try:
        await start
    except OSError as exc:
        # uvloop wraps the bind error; the errno is on its cause.
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        reason = os.strerror(cause.errno) if cause.errno else str(exc)
        raise StartupError(f"cannot listen for {what}: {reason}") from None


async def start_server(config: Config) -> RunningServer:
    data_dir: Path = config.server.data_dir
    prepare_data_dir(data_dir)
    lock = DataDirLock(data_dir)
    lock.acquire("run")  # before anything else is touched
    try:
        return await _start_owned(config, lock)
    except BaseException:
        lock.release()
        raise


async def _start_owned(config: Config, lock: DataDirLock) -> RunningServer:
    data_dir: Path = config.server.data_dir
    node_id = node_id_of(config)
    database = await open_server_database(config)
    db = database.pool
    media: MediaService | None = None
    sip: SipEndpoint | None = None
    writes: WriteBehind | None = None
    node = NodeMembership(db, node_id, data_dir)
    try:
        try:
            await node.join()  # before recovery: it must not touch a live server's calls
        except NodeInUse as exc:
            raise StartupError(str(exc)) from None
        database.supervise()
        keys = await open_key_ring(db, data_dir / "keys", node_id)
        try:
            bootstrap_password = await ensure_bootstrap_admin(
                db, config.auth.bootstrap_admin,
                os.environ.get("SIPREC_BOOTSTRAP_PASSWORD") or None)
        except AccessError as exc:
            raise ConfigError(
                f"auth.bootstrap_admin / SIPREC_BOOTSTRAP_PASSWORD: {exc}") from None
        if bootstrap_password is not None:
            # Shown once, on stdout only: never logged.
            print(f"siprec-server: created administrator {config.auth.bootstrap_admin!r}, "
                  f"password (shown only now): {bootstrap_password}", flush=True)
        signer = load_or_create_signing_key(data_dir / "keys")
        await recordings.register_signing_key(db, signer.key_id, node_id,
                                              signer.public_key_bytes())
        writes = WriteBehind(RecordingStore(db), data_dir / "journal", lambda: keys)
        replayed = await writes.replay()  # a crash during an outage left writes behind
        if replayed:
            log.warning("journal_writes_applied", count=replayed)
        writes.start()
        media = MediaService(
            data_dir=data_dir,
            storage=writes,
            keys=keys,
            signer=signer,
            node_id=node_id,
            bind_host=config.media.bind_address,
            ports=PortAllocator(config.media.rtp_port_min, config.media.rtp_port_max),
            dtmf_control=DtmfControl(
                config.media.dtmf_pause_sequence,
                config.media.dtmf_resume_sequence,
                config.media.dtmf_sequence_timeout,
            ),
            dtmf_control_from=config.media.dtmf_control_from,
            inactivity_timeout=config.media.inactivity_timeout,
            min_free_bytes=config.server.min_free_disk_mb * 2**20,
            rtp_source=cast(RtpSourcePolicy, config.media.rtp_source),
        )
        recovered = await media.recover()
        if recovered:
            log.warning("interrupted_recordings_recovered", count=recovered)
        for recording_id in await erasure.unfinished_erasures(db):
            # An erasure a crash interrupted: the key is already gone; finish the rest.
            await erasure.erase_recording(db, recording_id, actor="system:startup",
                                          reason="resume interrupted erasure",
                                          now=datetime.now(UTC))
        closed = await recordings.close_open_recordings(db, node_id, datetime.now(UTC))
        if closed:
            log.warning("open_recordings_closed_at_start", count=len(closed))
        listen = [parse_listen(value) for value in config.sip.listen]
        sip_host = advertised_address(config.sip.advertised_address, listen[0].host)
        media_host = config.media.advertised_address or sip_host
        agent = SipAgent(
            AgentSettings(
                local={"udp": (sip_host, 5060)},
                session_expires=config.sip.session_expires,
                min_se=config.sip.min_se,
                strict=config.sip.strict,
            )
        )
        sip = SipEndpoint(agent, limits=TransportLimits(
            sources=SourcePolicy.from_config(config.sip.allow_from),
            max_connections=config.sip.max_connections,
            max_connections_per_source=config.sip.max_connections_per_source,
            message_timeout=config.sip.message_timeout,
            idle_timeout=config.sip.idle_timeout,
            untrusted_rate=config.sip.untrusted_rate,
        ))
        recorder = Recorder(
            RecorderSettings(
                node_id=node_id,
                media_address=media_host,
                answer=AnswerPreferences(
                    codecs=config.media.codecs,
                    prefer="local" if config.media.codec_preference == "local" else "offer",
                    srtp_suites=config.media.srtp_suites,
                ),
                max_sessions=config.sip.max_sessions,
                retry_after=config.sip.retry_after,
                require_siprec=config.sip.require_siprec,
                sources=SourcePolicy.from_config(config.sip.allow_from),
                max_sessions_per_source=config.sip.max_sessions_per_source,
                max_streams=config.sip.max_streams,
                sdes_over_plain_sip=config.sip.sdes_over_plain_sip,
            ),
            storage=writes,
            sip=sip,
            ports=media,
            media=media,
        )
        sip.on_event = recorder.on_sip_event
        media.on_inactive = lambda session: recorder.end_session(session, "media inactive")
        media.on_storage_full = lambda session: recorder.end_session(session, "disk space low")
        media.disk.start()
        await _listening(
            "SIP on " + ", ".join(config.sip.listen),
            sip.listen(listen, _tls_context(config.sip.tls)),
        )
        bound = sip.bound_addresses()
        if sip.limits.sources.loopback_only and not all(is_loopback(h) for _k, h, _p in bound):
            log.warning("sip_allow_from_loopback_only",
                        hint="SRCs on other hosts are refused until sip.allow_from lists them")
        agent.settings = dataclasses.replace(
            agent.settings, local={kind: (sip_host, port) for kind, _host, port in reversed(bound)}
        )
        api_host, api_port = parse_host_port(config.api.listen)
        api = create_api(db=db, writes=writes)
        setup_identity(api, token_ttl_s=config.auth.token_ttl,
                       idle_timeout_s=config.auth.idle_timeout,
                       policy=LoginPolicy(max_failures=config.auth.max_failed_logins,
                                          lockout=timedelta(minutes=config.auth.lockout_minutes)))
        api[MEDIA_KEY] = media
        api[KEYS_KEY] = keys
        lifecycle = build_lifecycle(db, config, keys=keys, node_id=node_id, data_dir=data_dir,
                                    describe=detail_view)
        api[LIFECYCLE_KEY] = lifecycle
        setup_recordings(api)
        if config.ui.enabled:
            # After every API route: the web interface mounts them for its scripts.
            setup_ui(api, UiSettings(idle_timeout_s=config.auth.idle_timeout))
        metrics = setup_metrics(api, metrics_sources(recorder, media, sip))
        metrics.register("siprec_retention", "Retention enforcement",
                         lifecycle.retention.counters)
        metrics.register("siprec_subject", "Data-subject requests", lifecycle.subjects.counters)
        assert lifecycle.runner is not None
        metrics.register("siprec_lifecycle", "Background jobs", lifecycle.runner.counters)
        metrics.register("siprec_database", "The database and its supervision",
                         database.counters)
        metrics.register("siprec_database_writes", "Writes that waited for the database",
                         writes.counters)
        runner = web.AppRunner(api, access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner,
            api_host,
            api_port,
            ssl_context=_tls_context(config.api.tls),
        )
        try:
            await _listening(f"the API on {config.api.listen}", site.start())
        except BaseException:
            await runner.cleanup()
            raise
        api_address = runner.addresses[0][:2]
    except BaseException:
        if sip is not None:
            await sip.close()
        if media is not None:
            await media.close()
        if writes is not None:
            await writes.close()
        await node.leave()
        await database.close()
        raise
    server = RunningServer(config, lock, database, node, writes, sip, recorder, media, runner,
                           api_address, bound, lifecycle)
    lifecycle.start()
    for kind, host, port in bound:
        log.info("sip_listening", transport=kind, address=f"{host}:{port}")
    scheme = "https" if config.api.tls.cert_file else "http"
    log.info("api_listening", address=f"{scheme}://{api_address[0]}:{api_address[1]}")
    return server


def login_hint(config: Config, api_address: tuple[str, int]) -> str:
    """How to log in, as a command that works when pasted (the start-up banner)."""
    host, port = api_address
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host:
        host = f"[{host}]"
    tls = config.api.tls
    scheme = "https" if tls.cert_file else "http"
    cacert = f" --cacert {tls.cert_file}" if tls.cert_file else ""
    user = config.auth.bootstrap_admin or "USER"
    return (
        "siprec-server: log in with\n"
        f"  curl -s{cacert} -X POST {scheme}://{host}:{port}/api/v1/auth/token "
        f"-H 'Content-Type: application/json' "
        f"-d '{{\"username\": \"{user}\", \"password\": \"PASSWORD\"}}'\n"
        "  then send the token as: -H \"Authorization: Bearer TOKEN\"; "
        f"API description: {scheme}://{host}:{port}/api/v1/openapi.json"
    )


async def run_until_signalled(config: Config) -> None:
    server = await start_server(config)
    scheme = "https" if config.api.tls.cert_file else "http"
    print(f"siprec-server: SIP on {', '.join(f'{k}:{h}:{p}' for k, h, p in server.sip_addresses)}"
          f"; API on {scheme}://{server.api_address[0]}:{server.api_address[1]}", flush=True)
    print(login_hint(config, server.api_address), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
