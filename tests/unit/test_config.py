"""The one config loader: defaults, file, environment; errors name the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from siprec_server.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_file_documents_every_key_with_its_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())

    def flatten(obj: object, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                out.update(flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
            return out
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.update(flatten(v, f"{prefix}{k}."))
            return out
        value = obj
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, Path):
            value = str(value)
        return {prefix.rstrip("."): value}

    defaults = flatten(Config())
    documented = flatten(example)
    assert documented.keys() == defaults.keys()
    for key, value in defaults.items():
        documented_value = documented[key]
        if key == "server.data_dir":
            assert Path(str(documented_value)) == Path(str(value))
        else:
            assert documented_value == value, key
    assert load_config(EXAMPLE, env={}) == Config()


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\nlisten = "127.0.0.1:9000"\n[sip]\nmax_sessions = 7\n')
    config = load_config(path, env={"SIPREC_API__LISTEN": "127.0.0.1:9090",
                                    "SIPREC_SIP__TLS__CERT_FILE": "/x.pem",
                                    "SIPREC_SIP__LISTEN": "udp:127.0.0.1:5070, tcp:[::1]:5071",
                                    "SIPREC_CONFIG": "ignored", "OTHER__X": "ignored"})
    assert config.api.listen == "127.0.0.1:9090"
    assert config.sip.max_sessions == 7
    assert config.sip.tls.cert_file == "/x.pem"
    assert config.sip.listen == ("udp:127.0.0.1:5070", "tcp:[::1]:5071")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SIPREC_SIP__LISEN": "x"}, "sip.lisen"),
        ({"SIPREC_NOPE__X": "1"}, "nope"),
        ({"SIPREC_MEDIA__RTP_PORT_MIN": "abc"}, "media.rtp_port_min"),
        ({"SIPREC_MEDIA__RTP_PORT_MIN": "40000"}, "media.rtp_port_min"),
        ({"SIPREC_SIP__LISTEN": "sctp:0.0.0.0:5060"}, "sip.listen"),
        ({"SIPREC_SIP__LISTEN": "tls:0.0.0.0:5061"}, "sip.tls"),
        ({"SIPREC_SIP__MIN_SE": "30"}, "sip.min_se"),
        ({"SIPREC_SIP__REQUIRE_SIPREC": "maybe"}, "sip.require_siprec"),
        ({"SIPREC_MEDIA__CODECS": "PCMU,AMR"}, "media.codecs"),
        ({"SIPREC_MEDIA__SRTP_SUITES": "NULL_CIPHER"}, "media.srtp_suites"),
        ({"SIPREC_API__LISTEN": "localhost"}, "api.listen"),
        ({"SIPREC_MEDIA__ADVERTISED_ADDRESS": "not-an-ip"}, "media.advertised_address"),
        ({"SIPREC_MEDIA__RTP_SOURCE": "anyone"}, "media.rtp_source"),
        ({"SIPREC_MEDIA__DTMF_CONTROL_FROM": "agent"}, "media.dtmf_control_from"),
        ({"SIPREC_MEDIA__DTMF_CONTROL_FROM": "aor:"}, "media.dtmf_control_from"),
        ({"SIPREC_MEDIA__DTMF_CONTROL_FROM": "ssrc:1"}, "media.dtmf_control_from"),
    ],
)
def test_bad_values_are_refused_naming_the_key(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(env=env)


def test_bad_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sip\nlisten = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})
    path.write_text("[sip]\nlisten = 5060\n")
    with pytest.raises(ConfigError, match="sip.listen"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
