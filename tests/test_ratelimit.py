"""Token buckets: refill and refusal, and the shared bucket in Redis that holds across processes."""

from __future__ import annotations

import os
import uuid

import pytest

from chat import ratelimit

IN_CI = os.environ.get("CI", "").strip().lower() == "true"
REDIS_URL = "redis://127.0.0.1:6379/9"


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if IN_CI:
            raise
        pytest.skip(f"Redis is not running on 127.0.0.1:6379 ({exc})")


class TestBucket:
    def test_a_burst_is_allowed_then_refused_with_the_wait_for_one_token(self):
        bucket = ratelimit.Bucket(rate=2, burst=3)
        assert [bucket.take(now=100.0).allowed for _ in range(4)] == [True, True, True, False]
        refused = bucket.take(now=100.0)
        assert not refused.allowed and refused.retry_after == pytest.approx(0.5)

    def test_tokens_come_back_at_the_rate_and_never_past_the_burst(self):
        bucket = ratelimit.Bucket(rate=2, burst=3)
        for _ in range(3):
            bucket.take(now=0.0)
        assert bucket.take(now=0.5).allowed  # one token after 0.5 s at 2/s
        assert not bucket.take(now=0.5).allowed
        assert [bucket.take(now=100.0).allowed for _ in range(4)] == [True, True, True, False]


class TestSharedBucketInThisProcess:
    def test_a_key_is_shared_by_every_caller(self, settings):
        settings.REDIS_URL = ""
        key = f"test:{uuid.uuid4()}"
        assert [ratelimit.take(key, rate=1, burst=2).allowed for _ in range(3)] == [True, True, False]
        assert ratelimit.take(f"{key}:other", rate=1, burst=2).allowed

    def test_a_rate_of_zero_turns_the_limit_off(self, settings):
        settings.REDIS_URL = ""
        assert all(ratelimit.take("test:off", rate=0, burst=1).allowed for _ in range(50))


class TestSharedBucketInRedis:
    def test_two_processes_share_one_bucket(self, settings):
        """Two clients of the same Redis stand for two Daphne processes."""
        _redis_or_skip()
        import redis

        settings.REDIS_URL = REDIS_URL
        key = f"test:{uuid.uuid4()}"
        other_process = redis.Redis.from_url(REDIS_URL)
        assert ratelimit.take(key, rate=0.5, burst=2).allowed
        # The "other process" takes the second token through the same script.
        reply = other_process.eval(ratelimit._LUA, 1, ratelimit.KEY_PREFIX + key, 0.5, 2)
        assert int(reply[0]) == 1
        refused = ratelimit.take(key, rate=0.5, burst=2)
        assert not refused.allowed and 0 < refused.retry_after <= 2
        assert other_process.pttl(ratelimit.KEY_PREFIX + key) > 0  # buckets expire on their own

    async def test_the_async_path_uses_the_same_bucket(self, settings):
        _redis_or_skip()
        settings.REDIS_URL = REDIS_URL
        key = f"test:{uuid.uuid4()}"
        assert ratelimit.take(key, rate=1, burst=1).allowed
        refused = await ratelimit.atake(key, rate=1, burst=1)
        assert not refused.allowed and refused.retry_after > 0

    def test_without_redis_the_process_bucket_answers(self, settings, caplog):
        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
        ratelimit._sync_client = None
        try:
            key = f"test:{uuid.uuid4()}"
            with caplog.at_level("WARNING", logger="chat.ratelimit"):
                assert [ratelimit.take(key, rate=1, burst=1).allowed for _ in range(2)] == [True, False]
            assert "Redis unavailable" in caplog.text
        finally:
            ratelimit._sync_client = None
