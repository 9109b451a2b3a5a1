"""Accounts security: the sign-in lockout (django-axes), FUSION_SIGNUP and invites, static files' headers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import accounts
from chat.models import Invite
from tests.daphne import free_port, start_daphne, stop_process, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct-horse-battery-1"  # alice's, from tests/conftest.py
NEW_PASSWORD = "Fusion-sign-up-pw-42"


def _post_login(client: Client, username: str, password: str, *, ip: str, path: str = "/accounts/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=ip)


def _settings_in_subprocess(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "DJANGO_"))}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; " + code],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "fusionsite.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --------------------------------------------------------------------------- sign-in lockout


@pytest.mark.django_db
class TestSignInLockout:
    @pytest.fixture(autouse=True)
    def _limits(self, settings):
        settings.AXES_FAILURE_LIMIT = 3
        settings.AXES_COOLOFF_TIME = timedelta(minutes=15)

    def test_it_refuses_the_right_password_once_an_account_is_locked(self, client: Client, alice) -> None:
        for _ in range(3):
            _post_login(client, "alice", "wrong", ip="198.51.100.1")
        response = _post_login(client, "alice", PASSWORD, ip="198.51.100.1")
        assert response.status_code == 429
        assert "_auth_user_id" not in client.session

    def test_the_lockout_page_says_how_long_to_wait(self, client: Client, alice) -> None:
        for _ in range(2):
            _post_login(client, "alice", "wrong", ip="198.51.100.2")
        response = _post_login(client, "alice", "wrong", ip="198.51.100.2")
        assert response.status_code == 429
        assert response["Retry-After"] == "900"
        page = response.content.decode()
        assert "Too many failed sign-ins" in page and "Wait 15 minutes" in page
        assert 'name="password"' in page  # still the sign-in page, in the app's look

    def test_it_locks_an_account_from_every_address(self, client: Client, alice) -> None:
        for n in range(3):
            _post_login(client, "alice", "wrong", ip=f"203.0.113.{n + 1}")
        response = _post_login(client, "alice", PASSWORD, ip="203.0.113.99")
        assert response.status_code == 429

    def test_it_locks_an_address_for_every_account(self, client: Client, alice, bob) -> None:
        for name in ("carol", "dave", "erin"):
            _post_login(client, name, "wrong", ip="198.51.100.3")
        response = _post_login(client, "bob", "correct-horse-battery-2", ip="198.51.100.3")
        assert response.status_code == 429

    def test_other_accounts_from_other_addresses_are_not_locked(self, client: Client, alice, bob) -> None:
        for _ in range(3):
            _post_login(client, "alice", "wrong", ip="198.51.100.4")
        response = _post_login(client, "bob", "correct-horse-battery-2", ip="198.51.100.5")
        assert response.status_code == 302

    def test_it_covers_the_admin_login(self, client: Client, django_user_model) -> None:
        django_user_model.objects.create_superuser("root", "root@example.org", PASSWORD)
        for _ in range(3):
            _post_login(client, "root", "wrong", ip="198.51.100.6", path="/admin/login/")
        response = _post_login(client, "root", PASSWORD, ip="198.51.100.6", path="/admin/login/")
        assert response.status_code == 429
        assert "Too many failed sign-ins" in response.content.decode()

    def test_the_lock_lifts_after_the_cool_off(self, client: Client, alice) -> None:
        for _ in range(3):
            _post_login(client, "alice", "wrong", ip="198.51.100.7")
        AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
        response = _post_login(client, "alice", PASSWORD, ip="198.51.100.7")
        assert response.status_code == 302

    def test_a_wrong_password_below_the_limit_is_an_ordinary_error(self, client: Client, alice) -> None:
        response = _post_login(client, "alice", "wrong", ip="198.51.100.8")
        assert response.status_code == 200
        assert "Too many failed sign-ins" not in response.content.decode()

    def test_the_test_clients_login_still_works(self, client: Client, alice) -> None:
        assert client.login(username="alice", password=PASSWORD)

    def test_limit_and_cool_off_come_from_the_environment(self) -> None:
        result = _settings_in_subprocess(
            {"FUSION_LOGIN_FAILURE_LIMIT": "7", "FUSION_LOGIN_COOLOFF_MIN": "2.5"},
            "print(settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME.total_seconds(), settings.AXES_LOCKOUT_PARAMETERS)",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[0] == "7 150.0 ['username', 'ip_address']"


# --------------------------------------------------------------------------- FUSION_SIGNUP


class TestSignupSetting:
    def test_it_defaults_to_open_without_the_server_key(self) -> None:
        result = _settings_in_subprocess({"FUSION_ALLOW_SERVER_KEY": "false"}, "print(settings.FUSION_SIGNUP)")
        assert result.stdout.strip() == "open", result.stderr

    def test_it_defaults_to_invite_when_the_server_key_is_shared(self) -> None:
        result = _settings_in_subprocess({"FUSION_ALLOW_SERVER_KEY": "true"}, "print(settings.FUSION_SIGNUP)")
        assert result.stdout.strip() == "invite", result.stderr

    def test_an_explicit_mode_wins(self) -> None:
        result = _settings_in_subprocess(
            {"FUSION_ALLOW_SERVER_KEY": "true", "FUSION_SIGNUP": "Open"}, "print(settings.FUSION_SIGNUP)"
        )
        assert result.stdout.strip() == "open", result.stderr

    def test_it_refuses_an_unknown_mode(self) -> None:
        result = _settings_in_subprocess({"FUSION_SIGNUP": "anyone"}, "print(settings.FUSION_SIGNUP)")
        assert result.returncode != 0
        assert "FUSION_SIGNUP must be open, invite or closed" in result.stderr


def _signup(client: Client, query: str = "", username: str = "carol"):
    data = {"username": username, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    return client.post("/accounts/signup/" + query, data)


@pytest.mark.django_db
class TestSignupModes:
    def test_open_mode_lets_anyone_sign_up(self, client: Client, settings) -> None:
        settings.FUSION_SIGNUP = "open"
        assert _signup(client).status_code == 302
        assert get_user_model().objects.filter(username="carol").exists()

    def test_closed_mode_says_so_and_creates_nobody(self, client: Client, settings) -> None:
        settings.FUSION_SIGNUP = "closed"
        page = client.get("/accounts/signup/")
        assert page.status_code == 403
        assert "Sign-up is closed" in page.content.decode()
        assert _signup(client).status_code == 403
        assert not get_user_model().objects.filter(username="carol").exists()

    def test_closed_mode_hides_the_link_on_the_sign_in_page(self, client: Client, settings) -> None:
        settings.FUSION_SIGNUP = "closed"
        assert reverse("signup") not in client.get("/accounts/login/").content.decode()
        settings.FUSION_SIGNUP = "open"
        assert reverse("signup") in client.get("/accounts/login/").content.decode()

    def test_invite_mode_needs_a_token(self, client: Client, settings) -> None:
        settings.FUSION_SIGNUP = "invite"
        page = client.get("/accounts/signup/")
        assert page.status_code == 403
        assert "by invitation" in page.content.decode()
        assert _signup(client).status_code == 403
        assert not get_user_model().objects.filter(username="carol").exists()

    def test_an_invite_link_signs_up_once_and_is_marked_used(self, client: Client, settings, alice) -> None:
        settings.FUSION_SIGNUP = "invite"
        invite = accounts.invite_create(created_by=alice, note="for Carol")
        query = f"?invite={invite.token}"
        assert client.get("/accounts/signup/" + query).status_code == 200
        response = _signup(client, query)
        assert response.status_code == 302
        carol = get_user_model().objects.get(username="carol")
        invite.refresh_from_db()
        assert invite.used_by == carol and invite.used_at is not None
        assert client.session["_auth_user_id"] == str(carol.pk)

        client.logout()
        again = _signup(client, query, username="dave")
        assert again.status_code == 403
        assert "already been used" in again.content.decode()
        assert not get_user_model().objects.filter(username="dave").exists()

    @pytest.mark.parametrize(
        ("state", "message"),
        [("revoked", "was withdrawn"), ("expired", "expired on"), ("unknown", "not valid")],
    )
    def test_a_bad_invite_gets_a_clear_message(self, client: Client, settings, alice, state: str, message: str) -> None:
        settings.FUSION_SIGNUP = "invite"
        invite = accounts.invite_create(created_by=alice)
        token = invite.token
        if state == "revoked":
            accounts.invite_revoke(invite=invite)
        elif state == "expired":
            Invite.objects.filter(pk=invite.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
        else:
            token = "not-a-real-token"
        page = client.get(f"/accounts/signup/?invite={token}")
        assert page.status_code == 403
        assert message in page.content.decode()
        assert _signup(client, f"?invite={token}").status_code == 403
        assert not get_user_model().objects.filter(username="carol").exists()

    def test_a_rejected_form_leaves_the_invite_unused(self, client: Client, settings, alice) -> None:
        settings.FUSION_SIGNUP = "invite"
        invite = accounts.invite_create(created_by=alice)
        data = {"username": "carol", "password1": NEW_PASSWORD, "password2": "something else"}
        assert client.post(f"/accounts/signup/?invite={invite.token}", data).status_code == 400
        invite.refresh_from_db()
        assert invite.used_by is None and invite.used_at is None

    def test_the_user_is_rolled_back_when_the_invite_cannot_be_claimed(self, settings, alice, bob) -> None:
        settings.FUSION_SIGNUP = "invite"
        invite = accounts.invite_create(created_by=alice)
        # Someone else redeemed it between the page's check and this sign-up.
        Invite.objects.filter(pk=invite.pk).update(used_by=bob, used_at=timezone.now())
        with pytest.raises(accounts.SignupRefused):
            accounts.user_signup(username="carol", password=NEW_PASSWORD, invite_token=invite.token)
        assert not get_user_model().objects.filter(username="carol").exists()

    def test_invite_mode_says_so_on_the_sign_in_page(self, client: Client, settings) -> None:
        settings.FUSION_SIGNUP = "invite"
        page = client.get("/accounts/login/").content.decode()
        assert "by invitation" in page and reverse("signup") not in page


# --------------------------------------------------------------------------- Settings → Invites


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("sam", "sam@example.org", "correct-horse-battery-3", is_staff=True)


@pytest.mark.django_db
class TestInvitesPage:
    def test_staff_create_an_invite_and_see_its_link(self, client: Client, staff) -> None:
        client.force_login(staff)
        response = client.post(reverse("invites"), {"note": "for Carol", "expires_in_days": "7"})
        assert response.status_code == 302
        invite = Invite.objects.get()
        assert invite.note == "for Carol" and invite.created_by == staff
        assert timedelta(days=6, hours=23) < invite.expires_at - timezone.now() <= timedelta(days=7)
        page = client.get(reverse("invites")).content.decode()
        assert f"http://testserver/accounts/signup/?invite={invite.token}" in page
        assert "for Carol" in page and "Open" in page

    def test_an_invite_may_have_no_expiry(self, client: Client, staff) -> None:
        client.force_login(staff)
        client.post(reverse("invites"), {"note": "", "expires_in_days": "0"})
        assert Invite.objects.get().expires_at is None

    def test_the_list_shows_each_invites_status(self, client: Client, staff, alice) -> None:
        used = accounts.invite_create(created_by=staff, note="used one")
        Invite.objects.filter(pk=used.pk).update(used_by=alice, used_at=timezone.now())
        accounts.invite_revoke(invite=accounts.invite_create(created_by=staff, note="revoked one"))
        expired = accounts.invite_create(created_by=staff, note="expired one")
        Invite.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
        client.force_login(staff)
        page = client.get(reverse("invites")).content.decode()
        assert 'data-status="used"' in page and "used by alice" in page
        assert 'data-status="revoked"' in page and 'data-status="expired"' in page

    def test_staff_revoke_an_invite(self, client: Client, staff, settings) -> None:
        invite = accounts.invite_create(created_by=staff)
        client.force_login(staff)
        assert client.post(reverse("invite_revoke", args=[invite.pk])).status_code == 302
        invite.refresh_from_db()
        assert invite.revoked
        assert accounts.invite_status(invite=invite) == "revoked"

    def test_revoking_a_used_invite_keeps_it_used(self, client: Client, staff, alice) -> None:
        invite = accounts.invite_create(created_by=staff)
        Invite.objects.filter(pk=invite.pk).update(used_by=alice, used_at=timezone.now())
        client.force_login(staff)
        client.post(reverse("invite_revoke", args=[invite.pk]))
        invite.refresh_from_db()
        assert not invite.revoked and accounts.invite_status(invite=invite) == "used"

    def test_a_non_staff_user_gets_404(self, client: Client, alice, staff) -> None:
        invite = accounts.invite_create(created_by=staff)
        client.force_login(alice)
        assert client.get(reverse("invites")).status_code == 404
        assert client.post(reverse("invites"), {"expires_in_days": "7"}).status_code == 404
        assert client.post(reverse("invite_revoke", args=[invite.pk])).status_code == 404
        invite.refresh_from_db()
        assert not invite.revoked and Invite.objects.count() == 1

    def test_signed_out_visitors_are_sent_to_sign_in(self, client: Client) -> None:
        response = client.get(reverse("invites"))
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")

    def test_only_staff_see_the_invites_link(self, client: Client, alice, staff) -> None:
        client.force_login(alice)
        assert reverse("invites") not in client.get(reverse("keys")).content.decode()
        client.force_login(staff)
        assert reverse("invites") in client.get(reverse("keys")).content.decode()


# --------------------------------------------------------------------------- static files


TRAVERSALS = [
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2fetc%2fpasswd",
    "/static/css/..%2f..%2f..%2ffusionsite%2fsettings.py",
    "/static/%2e%2e%5c%2e%2e%5cetc%5cpasswd",
]


@pytest.mark.django_db
class TestStaticFiles:
    def test_static_files_carry_nosniff_and_the_csp(self, client: Client) -> None:
        response = client.get("/static/css/app.css")
        assert response.status_code == 200
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in response["Content-Security-Policy"]
        assert response["Content-Type"].startswith("text/css")

    @pytest.mark.parametrize("path", TRAVERSALS)
    def test_traversal_is_not_found(self, client: Client, path: str) -> None:
        assert client.get(path).status_code == 404


def _raw_get(port: int, path: str) -> tuple[int, str]:
    """One HTTP/1.1 request with the path exactly as given (HTTP clients would normalise it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return int(head.split(" ", 2)[1]), head.lower()


@pytest.fixture(scope="module")
def static_server(tmp_path_factory: pytest.TempPathFactory):
    """Daphne on a migrated temporary database, with DEBUG off as in production."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("static-daphne")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "DJANGO_"))},
        "DJANGO_SETTINGS_MODULE": "fusionsite.settings",
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "DJANGO_SECRET_KEY": "static-test-" + "x7Kq" * 12,
        "DJANGO_DEBUG": "false",
        "REDIS_URL": "",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    log_path = tmp / "daphne.log"
    with log_path.open("wb") as log:
        process = start_daphne(port, env, log)
        try:
            wait_until_healthy(
                f"http://127.0.0.1:{port}",
                process,
                name="Daphne",
                log_tail=lambda: log_path.read_text(errors="replace")[-4000:],
            )
            yield port, log_path
        finally:
            stop_process(process)


class TestStaticFilesOverDaphne:
    def test_static_files_carry_nosniff_and_the_csp(self, static_server) -> None:
        port, _ = static_server
        response = httpx.get(f"http://127.0.0.1:{port}/static/js/socket.js", timeout=10)
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in response.headers["content-security-policy"]

    def test_traversal_is_not_found_and_logs_no_error(self, static_server) -> None:
        port, log_path = static_server
        for path in TRAVERSALS:
            status, head = _raw_get(port, path)
            assert status == 404, (path, head)
        assert "Traceback" not in log_path.read_text(errors="replace")


@pytest.mark.django_db
class TestSignInRateLimit:
    @pytest.fixture(autouse=True)
    def _small_bucket(self, settings):
        from chat import ratelimit

        settings.FUSION_LOGIN_RATE_PER_MIN = 6  # one every 10 s
        settings.FUSION_LOGIN_BURST = 3
        settings.AXES_FAILURE_LIMIT = 100  # this is about the bucket, not the lockout
        ratelimit.reset_local()
        yield
        ratelimit.reset_local()

    def test_attempts_past_the_bucket_get_429_with_how_long_to_wait(self, client, alice):
        for _ in range(3):
            response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
            assert response.status_code == 200
        response = client.post("/accounts/login/", {"username": "alice", "password": "correct-horse-battery-1"})
        assert response.status_code == 429
        assert 1 <= int(response["Retry-After"]) <= 10
        assert "Too many sign-in attempts from your network" in response.content.decode()
        assert "_auth_user_id" not in client.session  # the right password did not get through

    def test_the_admin_sign_in_shares_the_bucket(self, client, alice):
        for _ in range(3):
            client.post("/admin/login/", {"username": "alice", "password": "wrong"})
        assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 429

    def test_another_address_has_its_own_bucket(self, client, alice):
        for _ in range(4):
            client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        other = client.post("/accounts/login/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
        assert other.status_code == 200

    def test_sign_in_pages_are_not_limited_for_reading(self, client):
        for _ in range(10):
            assert client.get("/accounts/login/").status_code == 200
