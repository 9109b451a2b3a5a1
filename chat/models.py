"""Conversations, turns, runs and member responses. Every row belongs to a user."""
from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class FollowUpMode(models.TextChoices):
    FUSED = "fused", "Members see previous prompts and fused answers"
    PER_MEMBER = "per_member", "Each member sees its own previous answers"


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New conversation")
    follow_up_mode = models.CharField(max_length=20, choices=FollowUpMode.choices, default=FollowUpMode.FUSED)
    # The panel chosen for this conversation: {"members": [{model, temperature, ...}], "analyst": {...}, ...}
    panel = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title


class Turn(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    index = models.PositiveIntegerField()
    prompt = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["conversation", "index"], name="turn_index_unique")]

    def latest_run(self) -> Run | None:
        return self.runs.order_by("-created_at", "-pk").first()


class RunStatus(models.TextChoices):
    RUNNING = "running"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


class Run(models.Model):
    """One pass of the pipeline for a turn. Regenerating or retrying after the end adds a run."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="runs")
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="runs")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="runs")
    # The client-generated id of the start message: a repeated start attaches instead of paying twice.
    client_run_id = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING, db_index=True)
    config = models.JSONField(default=dict)  # the panel as run: members, analyst, writer, fallbacks
    analysis = models.JSONField(null=True, blank=True)
    label_map = models.JSONField(default=dict, blank=True)
    analysis_error = models.TextField(blank=True)
    analyst_model = models.CharField(max_length=200, blank=True)
    writer_model = models.CharField(max_length=200, blank=True)
    answer = models.TextField(blank=True)
    failed_models = models.JSONField(default=list, blank=True)
    calls = models.JSONField(default=list, blank=True)  # CallRecord dicts of analyst and writer calls
    usage = models.JSONField(default=dict, blank=True)
    timings = models.JSONField(default=dict, blank=True)
    error_kind = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    process_id = models.CharField(max_length=80, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "client_run_id"], name="run_client_id_unique"),
            # One running run per conversation, enforced by the database so two tabs cannot race.
            models.UniqueConstraint(
                fields=["conversation"], condition=models.Q(status="running"), name="one_running_run_per_conversation"
            ),
        ]

    @property
    def is_running(self) -> bool:
        return self.status == RunStatus.RUNNING

    def wall_ms(self) -> int | None:
        if self.timings.get("total") is not None:
            return int(self.timings["total"])
        if self.finished_at:
            return int((self.finished_at - self.created_at).total_seconds() * 1000)
        return None


class MemberStatus(models.TextChoices):
    WAITING = "waiting"
    STREAMING = "streaming"
    COMPLETE = "complete"
    FAILED = "failed"
    STOPPED = "stopped"


class MemberResponse(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="members")
    slot = models.PositiveSmallIntegerField()
    model = models.CharField(max_length=200)
    label = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, choices=MemberStatus.choices, default=MemberStatus.WAITING)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    error_kind = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    ttft_ms = models.IntegerField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["slot"]
        constraints = [models.UniqueConstraint(fields=["run", "slot"], name="member_slot_unique")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "model": self.model,
            "label": self.label,
            "status": self.status,
            "content": self.content,
            "reasoning": self.reasoning,
            "error_kind": self.error_kind,
            "error_message": self.error_message,
            "ttft_ms": self.ttft_ms,
            "duration_ms": self.duration_ms,
            "usage": self.usage,
        }
