"""The front end's security settings: refused when they would start the manager open by
accident, warned about when they are open on purpose."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from framepipe.server.settings import (
    ServerSettings,
    SettingsError,
    add_arguments,
    from_arguments,
    is_loopback_host,
    validated,
)


def parse(argv: list[str], env: dict[str, str] | None = None) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(argv), env or {})


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_token_is_refused_not_ignored(value: str) -> None:
    with pytest.raises(SettingsError, match="FRAMEPIPE_TOKEN is set but empty"):
        ServerSettings.from_env({"FRAMEPIPE_TOKEN": value})
    with pytest.raises(SettingsError, match="--token is set but empty"):
        parse(["--token", value])


@pytest.mark.parametrize("token", ['has"quote', "back\\slash", "sla/sh", "with space", "é" * 20])
def test_tokens_must_be_written_alike_by_every_json_encoder(token: str) -> None:
    with pytest.raises(SettingsError, match="printable ASCII"):
        ServerSettings.from_env({"FRAMEPIPE_TOKEN": token})


def test_an_unset_token_means_none_and_a_set_one_is_kept() -> None:
    assert ServerSettings.from_env({}).token is None
    assert ServerSettings.from_env({"FRAMEPIPE_TOKEN": "abc-DEF_123.~+="}).token == (
        "abc-DEF_123.~+="
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.168.1.10", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"without a token.*--allow-unauthenticated"):
        parse(["--host", "0.0.0.0", "--video-dir", str(tmp_path)])


def test_binding_beyond_loopback_needs_video_dirs_even_with_a_token() -> None:
    with pytest.raises(SettingsError, match="needs FRAMEPIPE_VIDEO_DIRS"):
        parse(["--host", "0.0.0.0", "--token", "t" * 32])
    with pytest.raises(SettingsError, match="needs FRAMEPIPE_VIDEO_DIRS"):
        parse(["--host", "0.0.0.0", "--allow-unauthenticated"])


def test_binding_beyond_loopback_on_purpose_is_warned_about(tmp_path: Path) -> None:
    settings = parse(["--host", "0.0.0.0", "--allow-unauthenticated", "--video-dir", str(tmp_path)])
    warnings = " | ".join(settings.security_warnings())
    assert "WITHOUT a token" in warnings and "without TLS" in warnings
    with_token = parse(
        ["--host", "0.0.0.0", "--video-dir", str(tmp_path)], {"FRAMEPIPE_TOKEN": "s"}
    )
    assert "characters long" in " ".join(with_token.security_warnings())
    assert parse([]).security_warnings() == []


def test_video_dirs_from_env_and_flags_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "b")
    settings = parse([], {"FRAMEPIPE_VIDEO_DIRS": f"{tmp_path}/a:{tmp_path}/link"})
    assert settings.video_dirs == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    flags = parse(["--video-dir", str(tmp_path / "a")], {"FRAMEPIPE_VIDEO_DIRS": "/nope"})
    assert flags.video_dirs == ((tmp_path / "a").resolve(),)
    assert parse([]).video_dirs is None


def test_video_dirs_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="is not a directory"):
        parse([], {"FRAMEPIPE_VIDEO_DIRS": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="names no directory"):
        parse([], {"FRAMEPIPE_VIDEO_DIRS": ":"})


def test_tls_needs_both_files_and_files_that_load(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="both a certificate and its key"):
        parse(["--tls-cert", str(tmp_path / "c.pem")])
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="cannot be loaded"):
        parse(
            [],
            {
                "FRAMEPIPE_TLS_CERT": str(tmp_path / "c.pem"),
                "FRAMEPIPE_TLS_KEY": str(tmp_path / "k.pem"),
            },
        )


def test_tls_context_from_a_self_signed_certificate(tmp_path: Path) -> None:
    from tests.tls import self_signed

    cert, key = self_signed(tmp_path)
    settings = parse(["--tls-cert", str(cert), "--tls-key", str(key)])
    context = settings.tls_context()
    assert context is not None


def test_front_limits_from_env() -> None:
    settings = ServerSettings.from_env(
        {
            "FRAMEPIPE_MAX_CONNECTIONS": "64",
            "FRAMEPIPE_MAX_PENDING_BYTES": str(8 << 20),
            "FRAMEPIPE_MAX_JSON_DEPTH": "16",
            "FRAMEPIPE_MAX_JSON_ITEMS": "1000",
            "FRAMEPIPE_MAX_MESSAGE_BYTES": "65536",
        }
    )
    assert (settings.max_connections, settings.max_pending_bytes) == (64, 8 << 20)
    assert (settings.max_json_depth, settings.max_json_items) == (16, 1000)
    assert settings.max_message_bytes == 65536
    assert ServerSettings().max_message_bytes == 1024 * 1024
    with pytest.raises(SettingsError, match="FRAMEPIPE_MAX_CONNECTIONS"):
        ServerSettings.from_env({"FRAMEPIPE_MAX_CONNECTIONS": "0"})


def test_validated_settings_are_a_fixed_point(tmp_path: Path) -> None:
    settings = parse(["--video-dir", str(tmp_path)])
    assert validated(settings) == settings
