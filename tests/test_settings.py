"""Settings: environment first, then .env, then defaults; bad values name the variable."""

from __future__ import annotations

import pytest

from mailhub.errors import SettingsError
from mailhub.settings import Settings, load_settings


def test_defaults_need_nothing_configured(tmp_path):
    settings = load_settings({}, env_file=tmp_path / ".env")
    assert settings == Settings()
    assert settings.capture_mode
    assert (settings.host, settings.port, settings.max_attempts) == ("127.0.0.1", 8000, 3)
    assert settings.result_retention == 7 * 24 * 3600


def test_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SMTP_HOST=file.example.com\nSMTP_USER=me@example.com\nSMTP_PASS=pw\n")
    settings = load_settings({"SMTP_HOST": "env.example.com"}, env_file=env_file)
    assert settings.smtp_host == "env.example.com"
    assert settings.smtp_user == "me@example.com"
    assert settings.mail_from == "me@example.com"
    assert not settings.capture_mode


@pytest.mark.parametrize(("port", "tls"), [("465", "ssl"), ("587", "starttls"), ("25", "starttls")])
def test_tls_mode_follows_the_port(tmp_path, port, tls):
    settings = load_settings({"SMTP_HOST": "h", "SMTP_PORT": port}, env_file=None)
    assert settings.smtp_tls == tls


@pytest.mark.parametrize(("env", "variable"), [
    ({"SMTP_PORT": "abc"}, "SMTP_PORT"),
    ({"SMTP_PORT": "70000"}, "SMTP_PORT"),
    ({"SMTP_TLS": "tls"}, "SMTP_TLS"),
    ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
    ({"WORKER_CONCURRENCY": "-1"}, "WORKER_CONCURRENCY"),
    ({"MAIL_FROM": "nobody"}, "MAIL_FROM"),
    ({"SMTP_USER": "me@example.com"}, "SMTP_PASS"),
    ({"CLAIM_TIMEOUT": "10", "SMTP_TIMEOUT": "30"}, "CLAIM_TIMEOUT"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
])
def test_bad_value_names_the_variable(env, variable):
    with pytest.raises(SettingsError) as raised:
        load_settings(env, env_file=None)
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message
