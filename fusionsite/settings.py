"""One settings module, driven by environment variables (and an optional ``.env`` file).

Every variable is listed in the README. Nothing secret is a constant here.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import TypedDict

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env", override=False)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _secret_key() -> str:
    """DJANGO_SECRET_KEY, or one generated on first run and kept in a local, git-ignored file."""
    key = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if key:
        return key
    path = Path(os.environ.get("DJANGO_SECRET_KEY_FILE", BASE_DIR / ".secret_key"))
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        path.write_text(key)
        path.chmod(0o600)
        return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    # After the two above: a static file it answers still gets nosniff and the CSP on the way out.
    "fusionsite.staticfiles.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # How fast one address may try to sign in at all (a token bucket; FUSION_LOGIN_RATE_PER_MIN).
    "chat.ratelimit.SignInRateLimitMiddleware",
    # Last, as django-axes asks: turns a lockout flagged during sign-in into the 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "fusionsite.urls"
ASGI_APPLICATION = "fusionsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.site",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Checkpoints from the run manager and page requests write concurrently.
    DATABASES["default"].setdefault("OPTIONS", {})
    # WAL lets pages read while a run checkpoints; synchronous=NORMAL is durable across
    # application crashes in WAL mode and makes each commit several times cheaper.
    DATABASES["default"]["OPTIONS"].update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file (not :memory:) so a live Daphne in the browser tests can share it; per process so two
    # test runs on one machine do not collide.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels_redis, reading this process's messages in batches (chat.redis_layer).
            "BACKEND": "chat.redis_layer.PumpedRedisChannelLayer",
            # socket_timeout=None: redis-py 8's default 5 s read timeout kills channels_redis' 5 s
            # BZPOPMIN wait, so every idle consumer died (django/channels_redis#422).
            # A process's own channels (its sockets') share one Redis inbox, and channels_redis
            # checks a channel's capacity against that inbox: 1500 for all of a process's sockets
            # dropped frames once a busy process fell a second behind. Each socket's own buffer
            # in the process stays at 1500.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "capacity": 1500,
                "channel_capacity": {"specific.*": 50_000},
                "expiry": 30,
            },
        }
    }
else:
    # Channels' in-memory layer without its per-message sweep and copies (chat.layers).
    CHANNEL_LAYERS = {"default": {"BACKEND": "chat.layers.FastInMemoryChannelLayer", "CONFIG": {"capacity": 1500}}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The lockout check first: a locked-out account or address is refused before its password is tried.
AUTHENTICATION_BACKENDS = [
    "chat.accounts.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# django-axes: failed sign-ins are counted per account and per client address separately (either
# reaching the limit locks), on the sign-in page and /admin/login/ alike. A locked-out account or
# address is refused, even with the right password, until FUSION_LOGIN_COOLOFF_MIN minutes pass
# without another attempt. The address is REMOTE_ADDR: behind a proxy, run Daphne with
# --proxy-headers so it is the client's, not the proxy's.
AXES_FAILURE_LIMIT = env_int("FUSION_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("FUSION_LOGIN_COOLOFF_MIN", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Every attempt while locked out restarts the wait, so the page can say exactly how long it is.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = True
AXES_LOCKOUT_CALLABLE = "chat.accounts.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False  # no banner on every manage.py command; failures and lockouts are still logged
# Failures are what the lockout needs; a row per successful sign-in would only grow.
AXES_DISABLE_ACCESS_LOG = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves STATIC_ROOT (after collectstatic) and, through the finders, static/ itself, so
# tests and a fresh checkout need no collectstatic. Behind a proxy that serves STATIC_ROOT, the
# /static/ requests never reach it.
WHITENOISE_USE_FINDERS = True
WHITENOISE_ALLOW_ALL_ORIGINS = False  # no other site needs our CSS and scripts
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# TLS: FUSION_BEHIND_TLS=true when the site is reached over HTTPS only (usually a proxy that
# terminates TLS and sets X-Forwarded-Proto). It switches on HSTS, the redirect to HTTPS, secure
# cookies and trusting the proxy's header; each can still be set on its own.
FUSION_BEHIND_TLS = env_bool("FUSION_BEHIND_TLS", False)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", FUSION_BEHIND_TLS)
# A load balancer's plain-HTTP health probe must not be redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if FUSION_BEHIND_TLS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", FUSION_BEHIND_TLS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", FUSION_BEHIND_TLS)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", FUSION_BEHIND_TLS)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", FUSION_BEHIND_TLS)


def _proxy_ssl_header() -> tuple[str, str] | None:
    """DJANGO_SECURE_PROXY_SSL_HEADER "Header-Name: value" ("" for none); X-Forwarded-Proto: https behind TLS."""
    raw = os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER")
    if raw is None:
        return ("HTTP_X_FORWARDED_PROTO", "https") if FUSION_BEHIND_TLS else None
    if not raw.strip():
        return None
    name, sep, value = raw.partition(":")
    if not sep or not name.strip() or not value.strip():
        raise ImproperlyConfigured(
            f"DJANGO_SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https', not {raw!r}."
        )
    return "HTTP_" + name.strip().upper().replace("-", "_"), value.strip()


SECURE_PROXY_SSL_HEADER = _proxy_ssl_header()

# Content-Security-Policy: no inline script, no remote anything.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}

# --------------------------------------------------------------------------- the fusion engine

OPENROUTER_API_KEY = os.environ.get("OPENROUTER_API_KEY", "").strip()
OPENROUTER_BASE_URL = os.environ.get("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1").strip().rstrip("/")


class _ExtraProvider(TypedDict):
    base_url: str
    api_key: str
    supports_response_format: bool


def _extra_providers() -> dict[str, _ExtraProvider]:
    """FUSION_PROVIDERS: JSON {"name": {"base_url": ..., "api_key": ... or "api_key_env": ...}}.

    Models of such a provider are addressed as ``name:model`` (``ollama:llama3.1:8b``).
    """
    raw = os.environ.get("FUSION_PROVIDERS", "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"FUSION_PROVIDERS is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("FUSION_PROVIDERS must be a JSON object of name → {base_url, api_key}")
    providers: dict[str, _ExtraProvider] = {}
    for name, conf in data.items():
        if not isinstance(conf, dict) or not conf.get("base_url"):
            raise ValueError(f"FUSION_PROVIDERS[{name!r}] needs a base_url")
        key = conf.get("api_key") or os.environ.get(conf.get("api_key_env", ""), "")
        providers[name] = {
            "base_url": str(conf["base_url"]).rstrip("/"),
            "api_key": str(key or ""),
            "supports_response_format": bool(conf.get("supports_response_format", True)),
        }
    return providers


FUSION_PROVIDERS = _extra_providers()

# Timeouts of one model call, in seconds.
FUSION_CONNECT_TIMEOUT = env_float("FUSION_CONNECT_TIMEOUT", 10)
FUSION_FIRST_TOKEN_TIMEOUT = env_float("FUSION_FIRST_TOKEN_TIMEOUT", 90)
FUSION_IDLE_TIMEOUT = env_float("FUSION_IDLE_TIMEOUT", 60)
FUSION_TOTAL_TIMEOUT = env_float("FUSION_TOTAL_TIMEOUT", 600)

# Defaults of the composer's panel until presets exist.
FUSION_DEFAULT_PANEL = [
    m.strip()
    for m in os.environ.get(
        "FUSION_DEFAULT_PANEL", "anthropic/claude-opus-4.5,openai/gpt-5.1,google/gemini-3-pro-preview"
    ).split(",")
    if m.strip()
]
FUSION_DEFAULT_ANALYST = os.environ.get("FUSION_DEFAULT_ANALYST", "openai/gpt-5.1").strip()
FUSION_DEFAULT_WRITER = os.environ.get("FUSION_DEFAULT_WRITER", "anthropic/claude-opus-4.5").strip()

# Limits that produce clear errors.
FUSION_MAX_PROMPT_CHARS = env_int("FUSION_MAX_PROMPT_CHARS", 20000)
FUSION_MAX_CONCURRENT_RUNS_PER_USER = env_int("FUSION_MAX_CONCURRENT_RUNS_PER_USER", 3)
FUSION_MAX_WS_MESSAGE_BYTES = env_int("FUSION_MAX_WS_MESSAGE_BYTES", 64 * 1024)
FUSION_FRAME_INTERVAL_MS = env_int("FUSION_FRAME_INTERVAL_MS", 40)
FUSION_CHECKPOINT_INTERVAL_S = env_float("FUSION_CHECKPOINT_INTERVAL_S", 1.0)
# Worker processes that render live runs' Markdown off the event loop (chat.render.pool): one
# where there is a second core; 0 renders in the Daphne process itself.
FUSION_RENDER_PROCESSES = env_int("FUSION_RENDER_PROCESSES", 1 if (os.cpu_count() or 1) >= 2 else 0)

# Set by `make demo`: marks every page as running against simulated models.
FUSION_DEMO = env_bool("FUSION_DEMO", False)

# --------------------------------------------------------------------------- presets, keys, spend

# Built-in presets every user sees and can copy. The one place their model ids live; override the
# whole dict with FUSION_BUILTIN_PRESETS (JSON of the same shape). "~…-latest" ids are
# OpenRouter's aliases for the newest model of a family.
_FRONTIER_ANALYST = {"model": "~openai/gpt-latest"}
_FRONTIER_WRITER = {"model": "~anthropic/claude-opus-latest"}
FUSION_BUILTIN_PRESETS: dict[str, dict] = {
    "quality": {
        "name": "Quality",
        "description": "A frontier panel: the latest Claude Opus, GPT and Gemini Pro, with frontier analyst and writer.",
        "members": [
            {"model": "~anthropic/claude-opus-latest"},
            {"model": "~openai/gpt-latest"},
            {"model": "~google/gemini-pro-latest"},
        ],
        "analyst": _FRONTIER_ANALYST,
        "writer": _FRONTIER_WRITER,
    },
    "budget": {
        "name": "Budget",
        "description": "A cheap trio (Gemini Flash, Kimi, DeepSeek) with a frontier analyst.",
        "members": [
            {"model": "google/gemini-2.5-flash"},
            {"model": "moonshotai/kimi-k2"},
            {"model": "deepseek/deepseek-chat-v3.1"},
        ],
        "analyst": _FRONTIER_ANALYST,
        "writer": {"model": "google/gemini-2.5-flash"},
    },
    "fast": {
        "name": "Fast",
        "description": "Members with similar time to first token, so none gates the others.",
        "members": [
            {"model": "~anthropic/claude-haiku-latest"},
            {"model": "google/gemini-2.5-flash"},
            {"model": "openai/gpt-4.1-mini"},
        ],
        "analyst": {"model": "openai/gpt-4.1-mini"},
        "writer": {"model": "~anthropic/claude-haiku-latest"},
    },
    "self-panel": {
        "name": "Self-panel",
        "description": "One strong model twice: fusion gains even over itself.",
        "members": [
            {"model": "~anthropic/claude-opus-latest", "temperature": 0.7},
            {"model": "~anthropic/claude-opus-latest", "temperature": 1.0},
        ],
        "analyst": _FRONTIER_WRITER,
        "writer": _FRONTIER_WRITER,
    },
}
if os.environ.get("FUSION_BUILTIN_PRESETS", "").strip():
    FUSION_BUILTIN_PRESETS = json.loads(os.environ["FUSION_BUILTIN_PRESETS"])

# Users' own provider keys are encrypted with the first of these Fernet keys; all of them decrypt,
# so a new key can be put first and the keys re-encrypted (manage.py rotate_keys) before the old
# one is dropped. Unset: derived from DJANGO_SECRET_KEY (fine for one box; set it in production).
FUSION_KEY_ENCRYPTION_KEYS = [
    k.strip() for k in os.environ.get("FUSION_KEY_ENCRYPTION_KEYS", "").split(",") if k.strip()
]
# Whether users without their own key may use the server-wide keys (per-user override in the admin).
FUSION_ALLOW_SERVER_KEY = env_bool("FUSION_ALLOW_SERVER_KEY", False)
# Who may create an account: "open" (anyone), "invite" (with a link staff made in Settings →
# Invites) or "closed" (staff create accounts in the admin). Open sign-up while the server's keys
# are shared would hand every new account its own daily allowance, so the default is then invite.
FUSION_SIGNUP = os.environ.get("FUSION_SIGNUP", "").strip().lower() or ("invite" if FUSION_ALLOW_SERVER_KEY else "open")
if FUSION_SIGNUP not in {"open", "invite", "closed"}:
    raise ImproperlyConfigured(f"FUSION_SIGNUP must be open, invite or closed, not {FUSION_SIGNUP!r}.")
# Daily spend per user in USD (per-user override in the admin); 0 means no limit.
FUSION_DAILY_SPEND_LIMIT_USD = env_float("FUSION_DAILY_SPEND_LIMIT_USD", 5.0)
# How often the model catalogue (GET /models of each provider) is refreshed in the background.
FUSION_CATALOGUE_TTL_S = env_int("FUSION_CATALOGUE_TTL_S", 3600)

# --------------------------------------------------------------------------- web research tools

# web_search backend: "" (none: only web_fetch is offered), searxng, brave, tavily or exa.
FUSION_SEARCH_BACKEND = os.environ.get("FUSION_SEARCH_BACKEND", "").strip().lower()
# SearXNG: the instance's base URL (required); the hosted APIs: an optional override of their URL.
FUSION_SEARCH_URL = os.environ.get("FUSION_SEARCH_URL", "").strip()
FUSION_SEARCH_API_KEY = os.environ.get("FUSION_SEARCH_API_KEY", "").strip()
# What one search costs in USD (paid APIs); counted in the run's cost and the daily spend limit.
FUSION_SEARCH_PRICE_USD = env_float("FUSION_SEARCH_PRICE_USD", 0.0)
# web_fetch limits: whole fetch time, body bytes read (after decompression), text handed on.
FUSION_FETCH_TIMEOUT_S = env_float("FUSION_FETCH_TIMEOUT_S", 20.0)
FUSION_FETCH_MAX_BYTES = env_int("FUSION_FETCH_MAX_BYTES", 2_000_000)
FUSION_FETCH_MAX_CHARS = env_int("FUSION_FETCH_MAX_CHARS", 20_000)
# ONLY for tests and demos: hosts web_fetch may reach although their address is not public
# ("127.0.0.1" on 80/443, or "127.0.0.1:8123" for that port). Default: none. Every path of a
# trusted host:port is reachable from a model's web_fetch, so a production start-up refuses it
# unless told it is meant.
FUSION_FETCH_TRUSTED_HOSTS = [
    h.strip() for h in os.environ.get("FUSION_FETCH_TRUSTED_HOSTS", "").split(",") if h.strip()
]
if (
    FUSION_FETCH_TRUSTED_HOSTS
    and not DEBUG
    and not FUSION_DEMO
    and not env_bool("FUSION_FETCH_TRUSTED_HOSTS_I_KNOW", False)
):
    raise ImproperlyConfigured(
        "FUSION_FETCH_TRUSTED_HOSTS is set ("
        + ", ".join(FUSION_FETCH_TRUSTED_HOSTS)
        + ") while DJANGO_DEBUG is false and FUSION_DEMO is not set. Every path on a trusted host "
        "is reachable by the models' web_fetch; it is meant for tests and demos. Unset it, or set "
        "FUSION_FETCH_TRUSTED_HOSTS_I_KNOW=true if this server really should reach those hosts."
    )

# --------------------------------------------------------------------------- security and limits

# Most characters of one call's output that are kept and forwarded; past it the stream is closed
# and the card says "output truncated at N characters".
FUSION_MAX_OUTPUT_CHARS = env_int("FUSION_MAX_OUTPUT_CHARS", 200_000)
# Largest websocket frame the server sends; bigger HTML or snapshots are split or fetched over HTTP.
FUSION_MAX_WS_FRAME_BYTES = env_int("FUSION_MAX_WS_FRAME_BYTES", 256 * 1024)
# How often every open websocket's session is checked (logout, password change, deactivation).
FUSION_SESSION_RECHECK_S = env_float("FUSION_SESSION_RECHECK_S", 2.0)
# Token buckets for websocket frames: per socket and per user (across processes with REDIS_URL).
FUSION_WS_RATE_PER_S = env_float("FUSION_WS_RATE_PER_S", 10.0)
FUSION_WS_BURST = env_int("FUSION_WS_BURST", 40)
FUSION_WS_USER_RATE_PER_S = env_float("FUSION_WS_USER_RATE_PER_S", 20.0)
FUSION_WS_USER_BURST = env_int("FUSION_WS_USER_BURST", 80)
# Frames refused for the rate limit in a row before the socket is closed (4429).
FUSION_WS_FLOOD_CLOSE_AFTER = env_int("FUSION_WS_FLOOD_CLOSE_AFTER", 50)
# API requests per token (a token bucket; across processes with REDIS_URL).
FUSION_API_RATE_PER_MIN = env_float("FUSION_API_RATE_PER_MIN", 60.0)
FUSION_API_BURST = env_int("FUSION_API_BURST", 20)
# A streamed API response sends an SSE comment after this many seconds without an event, so
# proxies in between do not time the connection out while the panel and the analyst work.
FUSION_API_KEEPALIVE_S = env_float("FUSION_API_KEEPALIVE_S", 5.0)
# Sign-in attempts (POST) per client address: a token bucket in front of django-axes' lockout.
FUSION_LOGIN_RATE_PER_MIN = env_float("FUSION_LOGIN_RATE_PER_MIN", 10.0)
FUSION_LOGIN_BURST = env_int("FUSION_LOGIN_BURST", 10)
# A cap on what the server's own keys may spend per day across all users, in USD; 0 means none.
FUSION_SERVER_DAILY_LIMIT_USD = env_float("FUSION_SERVER_DAILY_LIMIT_USD", 0.0)
# How often each process sweeps for runs whose owning process died (heartbeat stopped).
FUSION_RUN_SWEEP_INTERVAL_S = env_float("FUSION_RUN_SWEEP_INTERVAL_S", 15.0)
