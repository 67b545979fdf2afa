"""Configuration: built-in defaults, a TOML file, then `SIPREC_<SECTION>__<KEY>` environment
overrides, validated at start with an error that names the offending key.

config.example.toml documents every key; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from siprec_server.media.source import RTP_SOURCE_POLICIES
from siprec_server.media.srtp_suites import SUITES, find_suite
from siprec_server.net.source_policy import parse_networks

KNOWN_CODECS = ("PCMU", "PCMA", "G722", "G729", "opus")
DTMF_CONTROL_KINDS = ("label", "aor", "number")
ENV_PREFIX = "SIPREC_"


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


class StartupError(Exception):
    """The server cannot start for a reason the operator can fix (a port in use, ...); the
    message says which, in one line."""


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("./var")
    node_id: str = ""
    log_format: str = "auto"
    log_level: str = "info"
    min_free_disk_mb: int = 512


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""


@dataclass(frozen=True)
class SipConfig:
    listen: tuple[str, ...] = ("udp:0.0.0.0:5060", "tcp:0.0.0.0:5060")
    advertised_address: str = ""
    max_sessions: int = 500
    retry_after: int = 30
    session_expires: int = 1800
    min_se: int = 90
    require_siprec: bool = False
    allow_from: tuple[str, ...] = ("127.0.0.0/8", "::1")
    max_connections: int = 2000
    max_connections_per_source: int = 20
    max_sessions_per_source: int = 50
    untrusted_rate: int = 20
    message_timeout: int = 10
    idle_timeout: int = 3600
    max_streams: int = 8
    sdes_over_plain_sip: str = "loopback"
    strict: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class MediaConfig:
    rtp_port_min: int = 20000
    rtp_port_max: int = 29999
    advertised_address: str = ""
    bind_address: str = "0.0.0.0"
    codecs: tuple[str, ...] = KNOWN_CODECS
    codec_preference: str = "offer"
    srtp_suites: tuple[str, ...] = tuple(s.name for s in SUITES)
    dtmf_pause_sequence: str = "*1"
    dtmf_resume_sequence: str = "*2"
    dtmf_sequence_timeout: int = 3
    dtmf_control_from: tuple[str, ...] = ("*",)
    inactivity_timeout: int = 300
    workers: int = -1
    rtp_source: str = "offer-address"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""
    migration_url: str = ""
    pool_max: int = 10


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:8080"
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class OidcConfig:
    issuer: str = ""
    client_id: str = ""
    client_secret: str = ""
    redirect_uri: str = ""
    username_claim: str = "preferred_username"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    display_name: str = "single sign-on"


@dataclass(frozen=True)
class UiConfig:
    enabled: bool = True
    oidc: OidcConfig = field(default_factory=OidcConfig)


@dataclass(frozen=True)
class AuthConfig:
    bootstrap_admin: str = "admin"
    token_ttl: int = 28800
    idle_timeout: int = 900
    max_failed_logins: int = 5
    lockout_minutes: int = 30


@dataclass(frozen=True)
class RetentionConfig:
    enabled: bool = True
    default_days: int = 365
    floor_days: int = 0
    ceiling_days: int = 3650
    interval: int = 300
    batch_size: int = 200


@dataclass(frozen=True)
class LifecycleConfig:
    bundle_ttl_days: int = 30
    scrypt_work_factor: int = 18
    job_stale_after: int = 600


@dataclass(frozen=True)
class KeysConfig:
    custody: str = "local"
    cryptoperiod_days: int = 365
    reminder_days: int = 15
    approvals: int = 2
    ceremony_window: int = 900
    rewrap_batch: int = 1000
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token: str = "siprec"
    pkcs11_pin_file: str = ""
    signing_key_pins: tuple[str, ...] = ()
    notify_webhooks: tuple[str, ...] = ()
    notify_email: tuple[str, ...] = ()
    smtp_server: str = ""
    smtp_from: str = "siprec-server@localhost"


@dataclass(frozen=True)
class AuditConfig:
    checkpoint_events: int = 1000
    checkpoint_interval: int = 300
    checkpoint_file: str = ""
    checkpoint_syslog: bool = False
    checkpoint_webhook: str = ""


@dataclass(frozen=True)
class RulesConfig:
    default_action: str = "record"
    opt_out_default: str = "discard"


DELIVERY_KINDS = ("sftp", "s3")
WEBHOOK_EVENTS = ("recording.started", "recording.sealed", "recording.erased", "recording.held")


@dataclass(frozen=True)
class DeliveryDestination:
    kind: str = ""
    url: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    host_key: str = ""
    client_key_file: str = ""
    recipient_key_file: str = ""
    include_restricted: bool = True


@dataclass(frozen=True)
class DeliveriesConfig:
    destinations: dict[str, DeliveryDestination] = field(default_factory=dict)
    max_attempts: int = 12
    retry_base: int = 30
    retry_max: int = 3600
    poll_interval: int = 5
    lease: int = 600


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str = ""
    secret: str = ""
    events: tuple[str, ...] = WEBHOOK_EVENTS


@dataclass(frozen=True)
class WebhooksConfig:
    endpoints: dict[str, WebhookEndpoint] = field(default_factory=dict)
    max_attempts: int = 10
    retry_base: int = 10
    retry_max: int = 3600
    timeout: int = 10


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    deliveries: DeliveriesConfig = field(default_factory=DeliveriesConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def parse_listen(value: str) -> ListenAddress:
    """"udp:0.0.0.0:5060", "tcp:[::1]:5060", "tls:0.0.0.0:5061"."""
    transport, sep, rest = value.partition(":")
    transport = transport.lower()
    if not sep or transport not in ("udp", "tcp", "tls"):
        raise ValueError(f"{value!r}: expected transport:host:port with udp, tcp or tls")
    host, port = _split_host_port(rest, value)
    return ListenAddress(transport, host, port)


def parse_host_port(value: str) -> tuple[str, int]:
    return _split_host_port(value, value)


def _split_host_port(rest: str, original: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{original!r}: expected host:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{original!r}: host must be an IP address") from None
    return host, int(port_text)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the file (if any), then the environment; validated."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        table = raw
        for key in keys[:-1]:
            nested = table.setdefault(key, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{name}: {'.'.join(keys[:-1])} is not a section")
            table = nested
        table[keys[-1]] = _EnvValue(value, name)
    config: Config = _build(Config, raw, "")
    _validate(config)
    return config


@dataclass(frozen=True, slots=True)
class _EnvValue:
    text: str
    variable: str


def _build(cls: type[Any], raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}{key}")
    values: dict[str, Any] = {}
    for name in fields:
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], key + ".")  # type: ignore[arg-type]
        elif typing.get_origin(hint) is dict:
            # A table of named tables ([deliveries.destinations.NAME]).
            item = typing.get_args(hint)[1]
            if not isinstance(raw[name], Mapping):
                raise ConfigError(f"{key}: expected a table of named tables")
            values[name] = {
                str(sub): _build(item, table, f"{key}.{sub}.")
                for sub, table in raw[name].items()
            }
        else:
            values[name] = _coerce(raw[name], hint, key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    where = key
    if isinstance(value, _EnvValue):
        where = f"{key} (from {value.variable})"
        value = _parse_env(value.text, hint, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str) and value:
            return Path(value)
    elif typing.get_origin(hint) is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(hint, types.UnionType):  # pragma: no cover - no such keys yet
        return value
    raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _parse_env(text: str, hint: Any, where: str) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if typing.get_origin(hint) is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"{where}: expected a list, got {text!r}") from None
        return [item.strip() for item in stripped.split(",") if item.strip()]
    return text


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", str: "a string", Path: "a path"}.get(
        hint, str(hint)
    )


def _validate_oidc(oidc: OidcConfig) -> None:
    if not oidc.issuer:
        return
    parts = urlsplit(oidc.issuer)
    if parts.scheme != "https" and not (
            parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1")):
        raise ConfigError("ui.oidc.issuer: an https URL (http only on loopback)")
    if not oidc.client_id:
        raise ConfigError("ui.oidc.client_id: required with ui.oidc.issuer")
    if not oidc.redirect_uri.endswith("/ui/oidc/callback"):
        raise ConfigError("ui.oidc.redirect_uri: this server's URL ending in /ui/oidc/callback, "
                          "as registered with the provider")
    if "openid" not in oidc.scopes:
        raise ConfigError("ui.oidc.scopes: must include openid")
    if not oidc.username_claim:
        raise ConfigError("ui.oidc.username_claim: the ID token claim naming the local user")


def _validate(config: Config) -> None:
    server, sip, media = config.server, config.sip, config.media
    if server.log_format not in ("auto", "json", "console"):
        raise ConfigError("server.log_format: expected auto, json or console")
    if server.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("server.log_level: expected debug, info, warning or error")
    if not sip.listen:
        raise ConfigError("sip.listen: at least one address is needed")
    for value in sip.listen:
        try:
            address = parse_listen(value)
        except ValueError as exc:
            raise ConfigError(f"sip.listen: {exc}") from None
        if address.transport == "tls" and not (sip.tls.cert_file and sip.tls.key_file):
            raise ConfigError("sip.tls.cert_file and sip.tls.key_file are needed for tls listen")
    for name, count in (("sip.max_sessions", sip.max_sessions),
                        ("sip.retry_after", sip.retry_after),
                        ("server.min_free_disk_mb", server.min_free_disk_mb)):
        if count < 0:
            raise ConfigError(f"{name}: must not be negative")
    for name, count in (("sip.max_connections", sip.max_connections),
                        ("sip.max_connections_per_source", sip.max_connections_per_source),
                        ("sip.max_sessions_per_source", sip.max_sessions_per_source),
                        ("sip.untrusted_rate", sip.untrusted_rate),
                        ("sip.message_timeout", sip.message_timeout),
                        ("sip.idle_timeout", sip.idle_timeout),
                        ("sip.max_streams", sip.max_streams)):
        if count < 1:
            raise ConfigError(f"{name}: must be at least 1")
    try:
        parse_networks(sip.allow_from)
    except ValueError as exc:
        raise ConfigError(f"sip.allow_from: {exc}") from None
    if sip.sdes_over_plain_sip not in ("refuse", "loopback", "allow"):
        raise ConfigError("sip.sdes_over_plain_sip: expected refuse, loopback or allow")
    if sip.tls.ca_file and not (sip.tls.cert_file and sip.tls.key_file):
        raise ConfigError("sip.tls.ca_file: mutual TLS also needs sip.tls.cert_file and key_file")
    if sip.min_se < 90:
        raise ConfigError("sip.min_se: RFC 4028 forbids less than 90 seconds")
    if sip.session_expires < sip.min_se:
        raise ConfigError("sip.session_expires: must be at least sip.min_se")
    if not 1024 <= media.rtp_port_min < media.rtp_port_max <= 65535:
        raise ConfigError("media.rtp_port_min/rtp_port_max: need 1024 <= min < max <= 65535")
    if media.rtp_port_max - media.rtp_port_min < 3:
        raise ConfigError("media.rtp_port_min/rtp_port_max: the range holds no RTP/RTCP pair")
    for codec in media.codecs:
        if codec.upper() not in {c.upper() for c in KNOWN_CODECS}:
            raise ConfigError(f"media.codecs: unknown codec {codec!r} (known: {KNOWN_CODECS})")
    if not media.codecs:
        raise ConfigError("media.codecs: at least one codec is needed")
    for name, sequence in (("media.dtmf_pause_sequence", media.dtmf_pause_sequence),
                           ("media.dtmf_resume_sequence", media.dtmf_resume_sequence)):
        if any(ch not in "0123456789*#ABCD" for ch in sequence) or len(sequence) > 8:
            raise ConfigError(f"{name}: up to 8 keys of 0-9 * # A-D, or empty to disable")
    if media.dtmf_pause_sequence and media.dtmf_pause_sequence == media.dtmf_resume_sequence:
        raise ConfigError("media.dtmf_resume_sequence: must differ from the pause sequence")
    for rule in media.dtmf_control_from:
        kind, colon, pattern = rule.partition(":")
        if rule != "*" and not (colon and kind in DTMF_CONTROL_KINDS and pattern.strip()):
            raise ConfigError(
                f"media.dtmf_control_from: {rule[:60]!r} is not \"*\", \"label:GLOB\", "
                "\"aor:GLOB\" or \"number:GLOB\"")
    if media.rtp_source not in RTP_SOURCE_POLICIES:
        raise ConfigError(f"media.rtp_source: expected one of {', '.join(RTP_SOURCE_POLICIES)}")
    if media.workers < -1 or media.workers > 256:
        raise ConfigError("media.workers: -1 (one per core), 0 (on the main process) or 1-256")
    if media.inactivity_timeout < 5:
        raise ConfigError("media.inactivity_timeout: at least 5 seconds")
    if media.codec_preference not in ("offer", "local"):
        raise ConfigError("media.codec_preference: expected offer or local")
    for suite in media.srtp_suites:
        if find_suite(suite) is None:
            raise ConfigError(f"media.srtp_suites: unknown suite {suite!r}")
    for name, value in (
        ("sip.advertised_address", sip.advertised_address),
        ("media.advertised_address", media.advertised_address),
        ("media.bind_address", media.bind_address),
    ):
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ConfigError(f"{name}: expected an IP address, got {value!r}") from None
    retention = config.retention
    if not 0 <= retention.floor_days <= retention.ceiling_days:
        raise ConfigError("retention.floor_days/ceiling_days: need 0 <= floor <= ceiling")
    if not retention.floor_days <= retention.default_days <= retention.ceiling_days:
        raise ConfigError("retention.default_days: must lie between floor_days and ceiling_days")
    if retention.default_days < 1:
        raise ConfigError("retention.default_days: at least 1")
    if retention.interval < 10:
        raise ConfigError("retention.interval: at least 10 seconds")
    if not 1 <= retention.batch_size <= 10000:
        raise ConfigError("retention.batch_size: 1 to 10000")
    lifecycle = config.lifecycle
    if lifecycle.bundle_ttl_days < 1:
        raise ConfigError("lifecycle.bundle_ttl_days: at least 1")
    if not 10 <= lifecycle.scrypt_work_factor <= 22:
        raise ConfigError("lifecycle.scrypt_work_factor: 10 to 22 (age's default is 18)")
    if lifecycle.job_stale_after < 60:
        raise ConfigError("lifecycle.job_stale_after: at least 60 seconds")
    if config.rules.default_action not in ("record", "metadata_only", "do_not_record"):
        raise ConfigError("rules.default_action: record, metadata_only or do_not_record")
    if config.rules.opt_out_default not in ("keep", "discard"):
        raise ConfigError("rules.opt_out_default: keep or discard")
    _validate_deliveries(config.deliveries, config.webhooks)

    if config.auth.token_ttl < 60:
        raise ConfigError("auth.token_ttl: at least 60 seconds")
    if not 60 <= config.auth.idle_timeout <= 900:
        raise ConfigError("auth.idle_timeout: 60 to 900 seconds (PCI DSS 8.2.8: at most 15 "
                          "minutes idle)")
    if not 1 <= config.auth.max_failed_logins <= 10:
        raise ConfigError("auth.max_failed_logins: 1 to 10 (PCI DSS 8.3.4)")
    if config.auth.lockout_minutes < 30:
        raise ConfigError("auth.lockout_minutes: at least 30 (PCI DSS 8.3.4)")
    _validate_oidc(config.ui.oidc)
    try:
        parse_host_port(config.api.listen)
    except ValueError as exc:
        raise ConfigError(f"api.listen: {exc}") from None
    _validate_keys(config.keys, config.audit)


def audit_checkpoint_file(config: Config) -> Path:
    """Where signed audit checkpoints are appended (and `verify --audit` reads them)."""
    if config.audit.checkpoint_file:
        return Path(config.audit.checkpoint_file)
    return config.server.data_dir / "audit-checkpoints.jsonl"


def _validate_keys(keys: KeysConfig, audit: AuditConfig) -> None:
    if keys.custody not in ("local", "shamir", "pkcs11"):
        raise ConfigError("keys.custody: expected local, shamir or pkcs11")
    if not 1 <= keys.cryptoperiod_days <= 3650:
        raise ConfigError("keys.cryptoperiod_days: 1 to 3650")
    if not 0 <= keys.reminder_days < keys.cryptoperiod_days:
        raise ConfigError("keys.reminder_days: 0 to less than keys.cryptoperiod_days")
    if not 2 <= keys.approvals <= 10:
        raise ConfigError("keys.approvals: 2 to 10 (dual control needs two people at least)")
    if not 60 <= keys.ceremony_window <= 86400:
        raise ConfigError("keys.ceremony_window: 60 to 86400 seconds")
    if not 1 <= keys.rewrap_batch <= 100000:
        raise ConfigError("keys.rewrap_batch: 1 to 100000")
    for url in (*keys.notify_webhooks, *((audit.checkpoint_webhook,)
                                         if audit.checkpoint_webhook else ())):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook {url!r}: expected an http(s) URL")
    if keys.notify_email and not keys.smtp_server:
        raise ConfigError("keys.notify_email needs keys.smtp_server (host:port)")
    if keys.smtp_server:
        host, _, port = keys.smtp_server.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("keys.smtp_server: expected host:port")
    if audit.checkpoint_events < 1 or audit.checkpoint_interval < 1:
        raise ConfigError("audit.checkpoint_events and audit.checkpoint_interval: at least 1")


def _validate_deliveries(deliveries: DeliveriesConfig, webhooks: WebhooksConfig) -> None:
    for name, dest in deliveries.destinations.items():
        where = f"deliveries.destinations.{name}"
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}: a name of letters, digits, - and _")
        if dest.kind not in DELIVERY_KINDS:
            raise ConfigError(f"{where}.kind: sftp or s3")
        if not dest.recipient_key_file:
            raise ConfigError(f"{where}.recipient_key_file: the customer's X.509 certificate "
                              "(PEM) or OpenPGP public key (armored); deliveries are always "
                              "encrypted")
        if dest.kind == "sftp":
            if not dest.url.startswith("sftp://"):
                raise ConfigError(f"{where}.url: sftp://user@host[:port]/directory")
            if not dest.host_key or not dest.client_key_file:
                raise ConfigError(f"{where}: host_key (the server's public key, pinned) and "
                                  "client_key_file (our private key) are required")
        elif not dest.url.startswith("s3://"):
            raise ConfigError(f"{where}.url: s3://bucket[/prefix]")
    for key in ("max_attempts", "retry_base", "retry_max", "poll_interval", "lease"):
        if getattr(deliveries, key) < 1:
            raise ConfigError(f"deliveries.{key}: at least 1")
    for name, hook in webhooks.endpoints.items():
        where = f"webhooks.endpoints.{name}"
        if not hook.url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.url: an http(s) URL")
        if len(hook.secret) < 16:
            raise ConfigError(f"{where}.secret: at least 16 characters (the HMAC key)")
        unknown = set(hook.events) - set(WEBHOOK_EVENTS)
        if unknown:
            raise ConfigError(f"{where}.events: known events are {', '.join(WEBHOOK_EVENTS)}")
    for key in ("max_attempts", "retry_base", "retry_max", "timeout"):
        if getattr(webhooks, key) < 1:
            raise ConfigError(f"webhooks.{key}: at least 1")
