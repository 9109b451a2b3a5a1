"""Deployment settings: TLS hardening from the environment, and refusing test-only settings in production."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[1]
TRUSTED = "127.0.0.1:8123"


def _run(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """manage.py or python -c with only the given FUSION_/DJANGO_ variables, and a fresh generated secret key."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "DJANGO_"))}
    full = {
        **base,
        "DJANGO_SETTINGS_MODULE": "fusionsite.settings",
        "DJANGO_SECRET_KEY_FILE": str(tmp_path / "secret_key"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        **env,
    }
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def _setting(name: str, env: dict[str, str], tmp_path: Path) -> str:
    code = f"import django; django.setup(); from django.conf import settings; print(repr(settings.{name}))"
    result = _run(["-c", code], env, tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


class TestBehindTls:
    def test_check_deploy_reports_nothing_with_it_set(self, tmp_path: Path) -> None:
        # No DJANGO_SECRET_KEY: the key generated on first run must pass W009 too.
        result = _run(
            ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
            {"FUSION_BEHIND_TLS": "true", "DJANGO_DEBUG": "false"},
            tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout
        assert (tmp_path / "secret_key").exists()

    def test_check_deploy_warns_without_it(self, tmp_path: Path) -> None:
        result = _run(["manage.py", "check", "--deploy"], {"DJANGO_DEBUG": "false"}, tmp_path)
        for code in ("W004", "W008", "W012", "W016"):
            assert f"security.{code}" in result.stdout + result.stderr

    def test_it_switches_everything_on_together(self, tmp_path: Path) -> None:
        env = {"FUSION_BEHIND_TLS": "true"}
        assert _setting("SECURE_SSL_REDIRECT", env, tmp_path) == "True"
        assert _setting("SECURE_HSTS_SECONDS", env, tmp_path) == "31536000"
        assert _setting("SESSION_COOKIE_SECURE", env, tmp_path) == "True"
        assert _setting("CSRF_COOKIE_SECURE", env, tmp_path) == "True"
        assert _setting("SECURE_PROXY_SSL_HEADER", env, tmp_path) == "('HTTP_X_FORWARDED_PROTO', 'https')"

    def test_each_setting_can_be_overridden(self, tmp_path: Path) -> None:
        env = {
            "FUSION_BEHIND_TLS": "true",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_SECURE_HSTS_SECONDS": "3600",
            "DJANGO_SESSION_COOKIE_SECURE": "false",
            "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Protocol: https",
        }
        assert _setting("SECURE_SSL_REDIRECT", env, tmp_path) == "False"
        assert _setting("SECURE_HSTS_SECONDS", env, tmp_path) == "3600"
        assert _setting("SESSION_COOKIE_SECURE", env, tmp_path) == "False"
        assert _setting("CSRF_COOKIE_SECURE", env, tmp_path) == "True"
        assert _setting("SECURE_PROXY_SSL_HEADER", env, tmp_path) == "('HTTP_X_FORWARDED_PROTOCOL', 'https')"
        assert _setting("SECURE_PROXY_SSL_HEADER", {**env, "DJANGO_SECURE_PROXY_SSL_HEADER": ""}, tmp_path) == "None"

    def test_it_is_off_by_default(self, tmp_path: Path) -> None:
        assert _setting("SECURE_SSL_REDIRECT", {}, tmp_path) == "False"
        assert _setting("SECURE_PROXY_SSL_HEADER", {}, tmp_path) == "None"

    def test_a_malformed_proxy_header_is_refused(self, tmp_path: Path) -> None:
        result = _run(["manage.py", "check"], {"DJANGO_SECURE_PROXY_SSL_HEADER": "https"}, tmp_path)
        assert result.returncode != 0
        assert "DJANGO_SECURE_PROXY_SSL_HEADER must look like" in result.stderr

    def test_the_health_check_is_not_redirected(self, client: Client, settings) -> None:
        settings.SECURE_SSL_REDIRECT = True
        assert client.get("/healthz").status_code == 200
        assert client.get("/accounts/login/").status_code == 301


class TestTrustedFetchHosts:
    def test_production_refuses_them(self, tmp_path: Path) -> None:
        result = _run(
            ["manage.py", "check"], {"FUSION_FETCH_TRUSTED_HOSTS": TRUSTED, "DJANGO_DEBUG": "false"}, tmp_path
        )
        assert result.returncode != 0
        assert "ImproperlyConfigured" in result.stderr
        assert "FUSION_FETCH_TRUSTED_HOSTS is set (127.0.0.1:8123)" in result.stderr
        assert "FUSION_FETCH_TRUSTED_HOSTS_I_KNOW=true" in result.stderr

    @pytest.mark.parametrize(
        "extra",
        [{"DJANGO_DEBUG": "true"}, {"FUSION_DEMO": "true"}, {"FUSION_FETCH_TRUSTED_HOSTS_I_KNOW": "true"}],
        ids=["debug", "demo", "i-know"],
    )
    def test_debug_demo_or_an_explicit_yes_allow_them(self, tmp_path: Path, extra: dict[str, str]) -> None:
        env = {"FUSION_FETCH_TRUSTED_HOSTS": TRUSTED, "DJANGO_DEBUG": "false", **extra}
        result = _run(["manage.py", "check"], env, tmp_path)
        assert result.returncode == 0, result.stderr

    def test_production_without_them_starts(self, tmp_path: Path) -> None:
        assert _run(["manage.py", "check"], {"DJANGO_DEBUG": "false"}, tmp_path).returncode == 0
