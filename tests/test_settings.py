"""Settings: environment first, then .env, then defaults; bad values name the variable."""

from __future__ import annotations

import base64

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
    env_file.write_text(
        "SMTP_HOST=file.example.com\nSMTP_USER=me@example.com\nSMTP_PASS=pw\n"
        "ALLOWED_RECIPIENTS=@example.com\n"
    )
    settings = load_settings({"SMTP_HOST": "env.example.com"}, env_file=env_file)
    assert settings.smtp_host == "env.example.com"
    assert settings.smtp_user == "me@example.com"
    assert settings.mail_from == "me@example.com"
    assert not settings.capture_mode


@pytest.mark.parametrize(("port", "tls"), [("465", "ssl"), ("587", "starttls"), ("25", "starttls")])
def test_tls_mode_follows_the_port(tmp_path, port, tls):
    settings = load_settings(
        {"SMTP_HOST": "h", "SMTP_PORT": port, "ALLOWED_RECIPIENTS": "a@b.c"}, env_file=None
    )
    assert settings.smtp_tls == tls


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SMTP_PORT": "abc"}, "SMTP_PORT"),
        ({"SMTP_PORT": "70000"}, "SMTP_PORT"),
        ({"SMTP_TLS": "tls"}, "SMTP_TLS"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"WORKER_CONCURRENCY": "-1"}, "WORKER_CONCURRENCY"),
        ({"MAIL_FROM": "nobody"}, "MAIL_FROM"),
        ({"SMTP_USER": "me@example.com"}, "SMTP_PASS"),
        ({"CLAIM_TIMEOUT": "10", "SMTP_TIMEOUT": "30"}, "CLAIM_TIMEOUT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"MAX_STREAMS_PER_CLIENT": "0"}, "MAX_STREAMS_PER_CLIENT"),
        ({"MAX_STREAMS_PER_CLIENT": "many"}, "MAX_STREAMS_PER_CLIENT"),
        ({"KEEPALIVE_TIMEOUT": "-5"}, "KEEPALIVE_TIMEOUT"),
        ({"BODY_TIMEOUT": "soon"}, "BODY_TIMEOUT"),
    ],
)
def test_bad_value_names_the_variable(env, variable):
    with pytest.raises(SettingsError) as raised:
        load_settings(env, env_file=None)
    message = str(raised.value)
    assert variable in message
    assert "\n" not in message


def test_connection_limits_are_read_from_the_environment():
    settings = load_settings(
        {"MAX_STREAMS_PER_CLIENT": "5", "KEEPALIVE_TIMEOUT": "2.5", "BODY_TIMEOUT": "3"}, env_file=None
    )
    assert (settings.max_streams_per_client, settings.keepalive_timeout, settings.body_timeout) == (
        5,
        2.5,
        3.0,
    )
    defaults = load_settings({}, env_file=None)
    assert (defaults.max_streams_per_client, defaults.keepalive_timeout, defaults.body_timeout) == (
        20,
        5.0,
        10.0,
    )


REAL_SMTP = {"SMTP_HOST": "smtp.example.com", "SMTP_USER": "me@example.com", "SMTP_PASS": "pw"}


def test_real_smtp_without_an_allowlist_refuses_to_start():
    with pytest.raises(SettingsError, match="ALLOWED_RECIPIENTS") as raised:
        load_settings(REAL_SMTP, env_file=None)
    assert "anyone" in str(raised.value)


def test_allow_everyone_needs_api_keys():
    with pytest.raises(SettingsError, match="API_KEYS"):
        load_settings({**REAL_SMTP, "ALLOWED_RECIPIENTS": "*"}, env_file=None)
    settings = load_settings({**REAL_SMTP, "ALLOWED_RECIPIENTS": "*", "API_KEYS": "k1, k2"}, env_file=None)
    assert settings.api_keys == ("k1", "k2")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ALLOWED_RECIPIENTS": "example.com"}, "ALLOWED_RECIPIENTS"),
        ({"RATE_LIMIT": "lots"}, "RATE_LIMIT"),
        ({"TRUSTED_PROXIES": "proxy.local"}, "TRUSTED_PROXIES"),
        ({"CORS_ORIGINS": "www.example.com"}, "CORS_ORIGINS"),
    ],
)
def test_bad_abuse_settings_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        load_settings(env, env_file=None)


def test_abuse_settings_are_parsed():
    settings = load_settings(
        {
            **REAL_SMTP,
            "ALLOWED_RECIPIENTS": "Owner@Example.com, @corp.example",
            "RATE_LIMIT": "5/minute;50/day",
            "TRUSTED_PROXIES": "10.0.0.0/8",
            "CORS_ORIGINS": "https://www.Example.com/",
        },
        env_file=None,
    )
    assert settings.allowed_recipients == ("owner@example.com", "@corp.example")
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.cors_origins == ("https://www.example.com",)


def test_send_pace_settings_are_parsed():
    assert load_settings({}, env_file=None).smtp_rate == ""
    assert load_settings({"SMTP_RATE": "off"}, env_file=None).smtp_rate == ""
    settings = load_settings(
        {"SMTP_RATE": "14/second;500/hour", "SMTP_THROTTLE_PAUSE": "5", "SMTP_THROTTLE_RECOVERY": "120"},
        env_file=None,
    )
    assert settings.smtp_rate == "14/second;500/hour"
    assert (settings.smtp_throttle_pause, settings.smtp_throttle_recovery) == (5.0, 120.0)
    for env in ({"SMTP_RATE": "fast"}, {"SMTP_THROTTLE_PAUSE": "0"}):
        with pytest.raises(SettingsError, match=next(iter(env))):
            load_settings(env, env_file=None)


SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_notification_settings_are_parsed():
    settings = load_settings(
        {
            "WEBHOOK_URL": "https://hooks.example.com/in, http://127.0.0.1:9000/hook",
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_RETRY_BASE_DELAY": "0.5",
            "ALERT_EMAIL": "Owner <owner@example.com>",
            "ALERT_INTERVAL": "600",
        },
        env_file=None,
    )
    assert settings.webhook_urls == ("https://hooks.example.com/in", "http://127.0.0.1:9000/hook")
    assert (settings.webhook_timeout, settings.webhook_retry_base_delay) == (10.0, 0.5)
    assert settings.webhook_max_age == 24 * 3600
    assert (settings.alert_email, settings.alert_interval) == ("owner@example.com", 600.0)
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WEBHOOK_URL": "https://hooks.example.com/in"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_URL": "hooks.example.com", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL"),
        ({"WEBHOOK_SECRET": "sekrit-value-not-base64"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": "whsec_sekrit!value*"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_TIMEOUT": "0"}, "WEBHOOK_TIMEOUT"),
        ({"ALERT_EMAIL": "owner"}, "ALERT_EMAIL"),
        ({"ALERT_INTERVAL": "-1"}, "ALERT_INTERVAL"),
    ],
)
def test_bad_notification_settings_name_the_variable_in_one_line(env, variable):
    with pytest.raises(SettingsError) as raised:
        load_settings(env, env_file=None)
    message = str(raised.value)
    assert variable in message and "\n" not in message
    assert "sekrit" not in message  # a secret is never repeated


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "mymaster"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "redis://h"}, "REDIS_URL"),
        ({"REDIS_SENTINELS": "sentinel.local", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "h:99999", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_MIN_REPLICAS": "-1"}, "REDIS_MIN_REPLICAS"),
        ({"REDIS_MIN_REPLICAS": "some"}, "REDIS_MIN_REPLICAS"),
        ({"REDIS_WAIT_TIMEOUT": "0"}, "REDIS_WAIT_TIMEOUT"),
        ({"REDIS_ALLOW_EVICTION": "maybe"}, "REDIS_ALLOW_EVICTION"),
    ],
)
def test_bad_redis_settings_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable) as raised:
        load_settings(env, env_file=None)
    assert "\n" not in str(raised.value)


def test_redis_settings_are_parsed():
    settings = load_settings(
        {
            "REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26380",
            "REDIS_SENTINEL_MASTER": "mymaster",
            "REDIS_MIN_REPLICAS": "2",
            "REDIS_WAIT_TIMEOUT": "0.25",
            "REDIS_ALLOW_EVICTION": "1",
        },
        env_file=None,
    )
    assert settings.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (settings.redis_sentinel_master, settings.redis_min_replicas) == ("mymaster", 2)
    assert (settings.redis_wait_timeout, settings.redis_allow_eviction) == (0.25, True)
    assert not settings.embedded_redis
    defaults = load_settings({}, env_file=None)
    assert (defaults.redis_min_replicas, defaults.redis_wait_timeout) == (None, 0.5)
    assert defaults.embedded_redis and not defaults.redis_allow_eviction
    assert load_settings({"REDIS_MIN_REPLICAS": "auto"}, env_file=None).redis_min_replicas is None
