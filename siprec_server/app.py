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
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import asyncpg
from aiohttp import web

from api.app import create_api
from api.auth_api import setup_identity
from api.deliveries_api import DELIVERIES_KEY
from api.keys_api import setup_keys
from api.lifecycle_api import LIFECYCLE_KEY
from api.metrics import MetricsSources, setup_metrics
from api.recordings_api import KEYS_KEY, MEDIA_KEY, setup_recordings
from api.rules_api import CALLS_KEY
from api.ui import OidcSettings, UiSettings, setup_ui
from api.views import detail_view
from siprec_server.access import AccessError, LoginPolicy
from siprec_server.config import (
    Config,
    ConfigError,
    StartupError,
    TlsConfig,
    audit_checkpoint_file,
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
from siprec_server.services.audit_checkpoints import AuditCheckpointer
from siprec_server.services.database import DatabaseHandle, open_server_database
from siprec_server.services.deliveries import DeliveryService
from siprec_server.services.erasure_vacuum import ErasureVacuum
from siprec_server.services.keys import KeyService, KeySettings
from siprec_server.services.lifecycle import LifecycleServices, build_lifecycle
from siprec_server.services.node import NodeMembership
from siprec_server.services.notifications import Notifier
from siprec_server.services.periodic import Periodic
from siprec_server.sip.agent import AgentSettings, SipAgent
from siprec_server.siprec.sdp_answer import AnswerPreferences
from siprec_server.workers.engine import EngineEvents, InProcessEngine, MediaEngine
from siprec_server.workers.pool import WorkerPool
from storage import erasure, recordings
from storage.audit import AuditEvent, record_audit
from storage.audit_checkpoints import FileSink, SyslogSink
from storage.custody import KeyCustody, LocalCustody, ShamirCustody, TokenCustody
from storage.keys import KeyRing, KeyStoreError, LocalKeyStore, read_secret_file
from storage.nodes import NodeInUse
from storage.pkcs11_keys import Pkcs11Token
from storage.recording_store import RecordingStore
from storage.signing import SigningKeyHolder, load_or_create_sealed_signing_key
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


def open_custody(config: Config, ring: KeyRing) -> KeyCustody:
    """The key custody the config names; its keys are loaded by `KeyCustody.open`."""
    keys = config.keys
    if keys.custody == "shamir":
        return ShamirCustody(ring, cryptoperiod_days=keys.cryptoperiod_days)
    if keys.custody == "pkcs11":
        pin = os.environ.get("SIPREC_PKCS11_PIN", "")
        if keys.pkcs11_pin_file:
            try:
                pin = read_secret_file(Path(keys.pkcs11_pin_file)).decode().strip()
            except KeyStoreError as exc:
                raise StartupError(f"keys.pkcs11_pin_file: {exc}") from None
        if not pin:
            raise StartupError("keys.custody = pkcs11 needs the token's PIN: "
                               "keys.pkcs11_pin_file or $SIPREC_PKCS11_PIN")
        try:
            token = Pkcs11Token(keys.pkcs11_module, keys.pkcs11_token, pin)
        except KeyStoreError as exc:
            raise StartupError(str(exc)) from None
        return TokenCustody(ring, token, cryptoperiod_days=keys.cryptoperiod_days)
    return LocalCustody(ring, LocalKeyStore(config.server.data_dir / "keys"),
                        cryptoperiod_days=keys.cryptoperiod_days)


_LOCAL_CUSTODY_WARNING = (
    "siprec-server: WARNING: development key custody (keys.custody = local): the master key is a "
    "plain file under {dir}. Anyone with a copy of the data_dir can decrypt every recording. "
    "For production use keys.custody = shamir (sealed start, t-of-n custodians) or pkcs11; see "
    "README.md, 'Key custody'.")


def media_engine(config: Config) -> Callable[[EngineEvents], MediaEngine]:
    """Where calls' media runs: media worker processes (one per core by default), or this
    process's event loop (media.workers = 0)."""
    workers = config.media.workers
    if workers < 0:
        workers = len(os.sched_getaffinity(0)) or 1
    if workers == 0:
        return InProcessEngine

    def pool(events: EngineEvents) -> MediaEngine:
        return WorkerPool(events, workers, log_format=config.server.log_format,
                          log_level=config.server.log_level)

    return pool


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
    keys: KeyService | None = None
    background: list[Periodic] = field(default_factory=list)
    erasure_vacuum: ErasureVacuum | None = None
    checkpoints: AuditCheckpointer | None = None
    deliveries: DeliveryService | None = None

    @property
    def db(self) -> asyncpg.Pool:
        return self.database.pool

    async def stop(self) -> None:
        log.info("shutting_down")
        try:
            if self.lifecycle is not None:
                await self.lifecycle.close()
            for loop in self.background:
                await loop.close()
            if self.keys is not None:
                await self.keys.close()
            if self.erasure_vacuum is not None:
                await self.erasure_vacuum.close()
            if self.deliveries is not None:
                await self.deliveries.close()
            await self.recorder.shutdown()
            await self.media.close()
            await self.api_runner.cleanup()
            await self.sip.close()
            await self.writes.close()
            if self.checkpoints is not None:
                await self.checkpoints.close()
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
    key_service: KeyService | None = None
    node = NodeMembership(db, node_id, data_dir)
    try:
        try:
            await node.join()  # before recovery: it must not touch a live server's calls
        except NodeInUse as exc:
            raise StartupError(str(exc)) from None
        database.supervise()
        ring = KeyRing.sealed()  # every user of keys holds this one ring; custody fills it
        custody = open_custody(config, ring)
        try:
            await custody.open(db, datetime.now(UTC))
        except KeyStoreError as exc:
            raise StartupError(f"key custody ({config.keys.custody}): {exc}") from None
        if custody.created_first:
            await record_audit(db, AuditEvent(
                actor=f"node:{node_id}", action="key.master_created",
                target=custody.created_first, source=f"{custody.mode}-custody",
                details={"custody": custody.mode, "dual_control": False}))
            log.warning("master_key_created", key_id=custody.created_first, custody=custody.mode)
        if custody.mode == "local":
            print(_LOCAL_CUSTODY_WARNING.format(dir=data_dir / "keys"), file=sys.stderr,
                  flush=True)
            log.warning("development_key_custody", key_dir=str(data_dir / "keys"))
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
        signer = SigningKeyHolder()
        writes = WriteBehind(RecordingStore(db), data_dir / "journal", lambda: ring)
        media = MediaService(
            data_dir=data_dir,
            storage=writes,
            keys=ring,
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
            engine=media_engine(config),
        )
        started_writes = writes
        started_media = media

        async def after_unseal() -> None:
            """Start-up work that needs the keys: at once, or right after the unseal."""
            key, _created = await load_or_create_sealed_signing_key(
                db, ring, node_id, data_dir / "keys", datetime.now(UTC))
            signer.load(key)
            await recordings.register_signing_key(db, key.key_id, node_id,
                                                  key.public_key_bytes())
            replayed = await started_writes.replay()  # a crash during an outage left writes
            if replayed:
                log.warning("journal_writes_applied", count=replayed)
            started_writes.start()
            recovered = await started_media.recover()
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

        sinks: list[FileSink | SyslogSink] = [FileSink(audit_checkpoint_file(config))]
        if config.audit.checkpoint_syslog:
            sinks.append(SyslogSink())
        checkpointer = AuditCheckpointer(
            db, signer, node_id, sinks, webhook=config.audit.checkpoint_webhook,
            every_events=config.audit.checkpoint_events,
            every_seconds=config.audit.checkpoint_interval)
        notifier = Notifier(webhooks=config.keys.notify_webhooks,
                            email_to=config.keys.notify_email,
                            smtp_server=config.keys.smtp_server,
                            email_from=config.keys.smtp_from, node_id=node_id)
        key_service = KeyService(
            db, custody,
            KeySettings(node_id=node_id, cryptoperiod_days=config.keys.cryptoperiod_days,
                        reminder_days=config.keys.reminder_days,
                        approvals=config.keys.approvals,
                        ceremony_window=timedelta(seconds=config.keys.ceremony_window),
                        rewrap_batch=config.keys.rewrap_batch),
            notifier=notifier, on_unsealed=after_unseal, signer=signer,
            owner_dsn=database.owner_dsn, journal_dir=data_dir / "journal")
        if custody.sealed:
            state = "has no master key yet: run the init ceremony" if custody.needs_init else \
                f"is sealed: {custody.progress().threshold} custodians' shares are needed"
            print(f"siprec-server: the key store {state} (siprec-server keys unseal); SIP "
                  "answers 503 until then", file=sys.stderr, flush=True)
            log.warning("sealed", initialised=not custody.needs_init)
        else:
            await key_service.after_unseal()
        key_service.start()
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
        lifecycle = build_lifecycle(db, config, keys=ring, node_id=node_id, data_dir=data_dir,
                                    describe=detail_view)
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
            sealed=lambda: not key_service.ready,
            rules=lifecycle.rules,
        )
        sip.on_event = recorder.on_sip_event
        media.on_inactive = lambda session: recorder.end_session(session, "media inactive")
        media.on_storage_full = lambda session: recorder.end_session(session, "disk space low")
        media.on_lost = lambda session: recorder.end_session(session, "media worker lost")
        await media.open()
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
        setup_keys(api, key_service)
        api[MEDIA_KEY] = media
        api[KEYS_KEY] = ring
        api[LIFECYCLE_KEY] = lifecycle
        api[CALLS_KEY] = recorder
        deliveries = DeliveryService(db, ring, config.deliveries, config.webhooks, node_id,
                                     data_dir / "deliveries", detail_view)
        api[DELIVERIES_KEY] = deliveries
        setup_recordings(api)
        if config.ui.enabled:
            # After every API route: the web interface mounts them for its scripts.
            oidc = config.ui.oidc
            setup_ui(api, UiSettings(idle_timeout_s=config.auth.idle_timeout),
                     OidcSettings(oidc.issuer, oidc.client_id, oidc.client_secret,
                                  oidc.redirect_uri, oidc.username_claim, oidc.scopes,
                                  oidc.display_name) if oidc.issuer else None)
        metrics = setup_metrics(api, metrics_sources(recorder, media, sip))
        metrics.register("siprec_retention", "Retention enforcement",
                         lifecycle.retention.counters)
        metrics.register("siprec_subject", "Data-subject requests", lifecycle.subjects.counters)
        assert lifecycle.rules is not None
        metrics.register("siprec_rules", "Recording rules, opt-outs", lifecycle.rules.counters)
        metrics.register("siprec_delivery", "Encrypted deliveries and webhooks",
                         deliveries.counters)
        assert lifecycle.runner is not None
        key_service.register_jobs(lifecycle.runner)  # one job runner for every kind
        metrics.register("siprec_lifecycle", "Background jobs", lifecycle.runner.counters)
        metrics.register("siprec_database", "The database and its supervision",
                         database.counters)
        metrics.register("siprec_database_writes", "Writes that waited for the database",
                         writes.counters)
        metrics.register("siprec_keys", "Key custody: unseal, ceremonies, rotation, reminders",
                         key_service.counters)
        metrics.register("siprec_notifications", "Key reminders and alerts sent to people",
                         notifier.counters)
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
        if key_service is not None:
            await key_service.close()
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
                           api_address, bound, lifecycle=lifecycle, keys=key_service,
                           deliveries=deliveries)
    lifecycle.start()
    deliveries.start()
    # Reminders before a master key version is due, and a daily alert once it is overdue.
    cryptoperiods = Periodic(key_service.check_cryptoperiods, CRYPTOPERIOD_CHECK_S, log=log,
                             failure="cryptoperiod_check_failed")
    cryptoperiods.start()
    server.background.append(cryptoperiods)
    server.erasure_vacuum = ErasureVacuum(db, owner_dsn=database.owner_dsn)
    server.erasure_vacuum.start()
    server.checkpoints = checkpointer
    checkpointer.start()
    for kind, host, port in bound:
        log.info("sip_listening", transport=kind, address=f"{host}:{port}")
    scheme = "https" if config.api.tls.cert_file else "http"
    log.info("api_listening", address=f"{scheme}://{api_address[0]}:{api_address[1]}")
    return server


CRYPTOPERIOD_CHECK_S = 3600.0


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
