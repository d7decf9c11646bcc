"""The notification settings: their forms, where each value comes from, and errors that name the file and key
without repeating a password or a webhook's token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mltf_flow.config import load_settings
from mltf_flow.config.notify import SmtpServer, parse_smtp_url
from mltf_flow.errors import ConfigError
from mltf_flow.redaction import shown_value, url_origin


def _settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MLTF_FLOW_CONFIG", str(path))
    return path


def test_defaults_send_failures_to_nobody() -> None:
    settings = load_settings()
    assert (settings.notify_on, settings.notify_email, settings.smtp_url, settings.notify_webhook) == (
        "failure", (), None, None)


def test_from_a_file_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings_file(tmp_path, monkeypatch, {"notify_email": ["a@x.org"], "smtp_url": "smtps://bot@mail.x.org",
                                           "notify_on": "always", "notify_from": "mltf@x.org"})
    settings = load_settings()
    assert settings.notify_email == ("a@x.org",) and settings.notify_on == "always"
    assert parse_smtp_url(settings.smtp_url or "") == SmtpServer("mail.x.org", 465, "ssl", "bot")
    monkeypatch.setenv("MLTF_FLOW_NOTIFY_EMAIL", "b@x.org, c@x.org")
    monkeypatch.setenv("MLTF_FLOW_NOTIFY_ON", "never")
    assert load_settings().notify_email == ("b@x.org", "c@x.org") and load_settings().notify_on == "never"


@pytest.mark.parametrize(("url", "server"), [
    ("smtp://127.0.0.1", SmtpServer("127.0.0.1", 25, "plain")),
    ("smtp+starttls://alice@mail.example.org", SmtpServer("mail.example.org", 587, "starttls", "alice")),
    ("smtps://mail.example.org:2465", SmtpServer("mail.example.org", 2465, "ssl")),
])
def test_smtp_url_forms(url: str, server: SmtpServer) -> None:
    assert parse_smtp_url(url) == server


@pytest.mark.parametrize(("data", "expected"), [
    ({"notify_on": "sometimes"}, "'notify_on'"),
    ({"notify_email": ["not-an-address"], "smtp_url": "smtp://h"}, "not an e-mail address"),
    ({"smtp_url": "http://mail.example.org"}, "smtp+starttls://"),
    ({"notify_webhook": "ftp://hooks.example.org/T0/SECRETPATH"}, "http:// or https://"),
    ({"notify_email": ["a@x.org"]}, "needs key 'smtp_url'"),
])
def test_wrong_values_name_the_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            data: dict[str, object], expected: str) -> None:
    path = _settings_file(tmp_path, monkeypatch, data)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert str(path) in message and expected in message, message
    assert "SECRETPATH" not in message


def test_a_password_in_smtp_url_is_refused_without_being_repeated(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SMTP_URL", "smtp://alice:CANARYpw@mail.example.org")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "$MLTF_FLOW_SMTP_URL" in str(info.value) and "MLTF_FLOW_SMTP_PASSWORD" in str(info.value)
    assert "CANARYpw" not in str(info.value)


def test_a_webhook_is_shown_as_its_origin() -> None:
    url = "https://hooks.example.org/services/T0/B0/CANARYtoken?x=1"
    assert shown_value("notify_webhook", url) == "https://hooks.example.org/***"
    assert url_origin("https://u:pw@hooks.example.org:8443") == "https://hooks.example.org:8443"
    assert shown_value("notify_webhook", None) == "None"
