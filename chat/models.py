"""Conversations, turns, runs and member responses. Every row belongs to a user."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from chat.fusion import types as engine


class FollowUpMode(models.TextChoices):
    FUSED = "fused", "Members see previous prompts and fused answers"
    PER_MEMBER = "per_member", "Each member sees its own previous answers"


class ConversationSource(models.TextChoices):
    CHAT = "chat", "Chatroom"
    API = "api", "API"
    MCP = "mcp", "MCP"
    EVAL = "eval", "Eval"


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New conversation")
    # Which door started it: the sidebar marks conversations made through the API or MCP.
    source = models.CharField(max_length=10, choices=ConversationSource.choices, default=ConversationSource.CHAT)
    follow_up_mode = models.CharField(max_length=20, choices=FollowUpMode.choices, default=FollowUpMode.FUSED)
    # The panel chosen for this conversation: {"members": [{model, temperature, ...}], "analyst": {...}, ...}
    panel = models.JSONField(default=dict, blank=True)
    # The preset the panel came from: a user's preset, or a built-in's key ("quality", …).
    preset = models.ForeignKey("Preset", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    builtin_preset = models.CharField(max_length=40, blank=True)
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
    # Messages an API request sent before its last user message (system prompts, earlier turns
    # written by the client): [{role, content}]. They go to the models ahead of the prompt.
    context = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["conversation", "index"], name="turn_index_unique")]


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
    # Spend control: the upper estimate held while running, released when the run ends;
    # ``cost`` is what the providers reported.
    reserved_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    # Whether any call of this run was paid with a server key (FUSION_SERVER_DAILY_LIMIT_USD counts these).
    uses_server_key = models.BooleanField(default=False)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # Web research: every source of the run [{url, title, members}] and the tool counts
    # {searches, fetches, server_tool_use, search_cost_usd}.
    sources = models.JSONField(default=list, blank=True)
    tool_usage = models.JSONField(default=dict, blank=True)
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

    def wall_ms(self) -> int | None:
        if self.timings.get("total") is not None:
            return int(self.timings["total"])
        if self.finished_at:
            return int((self.finished_at - self.created_at).total_seconds() * 1000)
        return None


# The engine's vocabulary (chat.fusion.types.MemberStatus) is the one list: every status the run
# layer checkpoints, "thinking" and "searching" included, is a valid stored value.
MemberStatus = models.TextChoices(  # type: ignore[call-overload]  # django-stubs: no overload for the functional API
    "MemberStatus", [(s.name, s.value) for s in engine.MemberStatus]
)


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
    # Web research of this member: [{id, name, arguments, status, ok, summary, sources}],
    # the pages it used [{url, title, kind}], and notes such as "answered without tools".
    tool_calls = models.JSONField(default=list, blank=True)
    sources = models.JSONField(default=list, blank=True)
    notes = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["slot"]
        constraints = [models.UniqueConstraint(fields=["run", "slot"], name="member_slot_unique")]


# --------------------------------------------------------------------------- presets, keys, spend


class Preset(models.Model):
    """A user's saved panel. Built-in presets are not rows: they live in settings.FUSION_BUILTIN_PRESETS.

    ``config`` holds: members [{model, label, temperature, max_tokens, reasoning_effort,
    system_prompt}], analyst, writer, fallback_analyst, fallback_writer, follow_up_mode, and
    research {web_tools, max_tool_calls, excluded_domains, blocked_domains} (used by the tools).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presets")
    name = models.CharField(max_length=100)
    # The API names it ``fusion/<slug>``: set when the preset is made, kept when it is renamed.
    slug = models.SlugField(max_length=60)
    description = models.TextField(blank=True, max_length=2000)
    config = models.JSONField(default=dict)
    is_default = models.BooleanField(default=False)
    # Unguessable, revocable; regenerating replaces it so the old link stops working.
    share_token = models.CharField(max_length=64, unique=True, null=True, blank=True)
    copied_from_share = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(is_default=True), name="one_default_preset_per_user"
            ),
            models.UniqueConstraint(fields=["user", "slug"], name="preset_slug_unique_per_user"),
        ]

    def __str__(self) -> str:
        return self.name


class ProviderKey(models.Model):
    """A user's own API key for one provider, encrypted at rest; shown only as its last four characters."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_keys")
    provider = models.CharField(max_length=50)
    encrypted_key = models.TextField()
    last4 = models.CharField(max_length=4)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["provider"]
        constraints = [models.UniqueConstraint(fields=["user", "provider"], name="one_key_per_provider")]

    def __str__(self) -> str:
        return f"{self.provider} key …{self.last4}"


class UserLimits(models.Model):
    """Per-user overrides of the administrator's defaults (edited in the admin)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")
    # Null: settings.FUSION_DAILY_SPEND_LIMIT_USD applies.
    daily_spend_limit_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    # Null: settings.FUSION_ALLOW_SERVER_KEY applies.
    allow_server_key = models.BooleanField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "user limits"

    def __str__(self) -> str:
        return f"limits of {self.user}"


class CatalogueCache(models.Model):
    """The last good copy of one provider's GET /models, so an unreachable provider changes nothing."""

    provider = models.CharField(max_length=50, unique=True)
    # Where the copy came from: a provider whose base URL changed has no valid copy.
    base_url = models.CharField(max_length=500, blank=True)
    models_json = models.JSONField(default=list)
    fetched_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"catalogue of {self.provider}"


class Invite(models.Model):
    """A sign-up invitation made by staff (FUSION_SIGNUP=invite): an unguessable, single-use token."""

    token = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invites_made")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    used_by = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="invite_used"
    )
    used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"invite {self.token[:6]}… by {self.created_by}"


class SpendRole(models.TextChoices):
    PANEL = "panel", "Panel member"
    ANALYST = "analyst", "Analyst"
    WRITER = "writer", "Writer"
    SEARCH = "search", "Web search"
    JUDGE = "judge", "Evaluation judge"
    RUN = "run", "Whole run (recorded before the ledger)"


class SpendEntry(models.Model):
    """One call that reached a provider, as billed: the ledger that spend limits and usage read.

    Kept apart from conversations on purpose: the run, turn and conversation are plain values,
    not foreign keys, so deleting a conversation never changes what was spent.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="spend_entries")
    run_id = models.UUIDField(db_index=True)
    conversation_id = models.BigIntegerField(null=True, blank=True)
    turn_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    turn_index = models.PositiveIntegerField(null=True, blank=True)
    role = models.CharField(max_length=20, choices=SpendRole.choices)
    slot = models.PositiveSmallIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, blank=True)  # how the call ended: complete, stopped, failed, …
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    # Part of the usage is ours, not the provider's (a cut stream reported none).
    estimated = models.BooleanField(default=False)
    uses_server_key = models.BooleanField(default=False)
    ttft_ms = models.IntegerField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name_plural = "spend entries"

    def __str__(self) -> str:
        return f"{self.role} {self.model} {self.cost_usd}"


class ApiToken(models.Model):
    """A user's API token (``Authorization: Bearer fsn_…``). Only its SHA-256 is stored; the token
    itself is shown once, when it is made. It acts as its user: presets, keys, limits."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters after the prefix, so a user can tell their tokens apart.
    hint = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"API token {self.name} ({self.hint}…)"


# --------------------------------------------------------------------------- evaluations


class EvaluationStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"  # a limit was reached, or the user stopped it: running it again resumes
    COMPLETE = "complete"


class Evaluation(models.Model):
    """Configurations compared on rubric tasks (chat/evals/). Self-contained: the tasks, the
    configurations and the settings are stored, so running it again resumes where it stopped."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evaluations")
    name = models.CharField(max_length=200)
    tasks_name = models.CharField(max_length=200, blank=True)  # the file the tasks came from
    tasks = models.JSONField(default=list)  # chat.evals.tasks.Task as dicts, in order
    # [{key, name, kind: "preset" | "panel" | "solo", config: a preset config}]
    configs = models.JSONField(default=list)
    judge_model = models.CharField(max_length=200)
    passes = models.PositiveSmallIntegerField(default=3)
    research = models.JSONField(default=dict, blank=True)  # the same for every configuration
    guard_hosts = models.JSONField(default=list, blank=True)  # the contamination guard
    accept_threshold = models.FloatField(default=70.0)  # 0–100: an answer scoring this is accepted
    baseline = models.CharField(max_length=100, blank=True)  # a config key
    concurrency = models.PositiveSmallIntegerField(default=4)
    max_cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    status = models.CharField(max_length=20, choices=EvaluationStatus.choices, default=EvaluationStatus.PENDING)
    stopped_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.name


class EvalItemStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    ANSWERED = "answered"
    FAILED = "failed"
    REFUSED = "refused"  # the model declined (a content filter or a refusal), reported, not hidden


class EvalItem(models.Model):
    """One configuration's answer to one task: a run of the user's (a conversation marked Eval)."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="items")
    config_key = models.CharField(max_length=100)
    task_id = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=EvalItemStatus.choices, default=EvalItemStatus.PENDING)
    run_id = models.UUIDField(null=True, blank=True)  # a plain value: deleting the conversation keeps the item
    conversation_id = models.BigIntegerField(null=True, blank=True)
    answer = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.IntegerField(null=True, blank=True)
    # Tool calls or sources that touched a guarded host: [{host, url, where}]
    guard_flags = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["evaluation", "config_key", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["evaluation", "config_key", "task_id"], name="eval_item_unique"),
        ]


class EvalJudgement(models.Model):
    """One judging pass over one answer: a verdict per criterion, with the judge's reason."""

    item = models.ForeignKey(EvalItem, on_delete=models.CASCADE, related_name="judgements")
    pass_index = models.PositiveSmallIntegerField()
    verdicts = models.JSONField(default=dict)  # criterion id → {met: bool | None, reason}
    failures = models.JSONField(default=list, blank=True)
    score = models.FloatField(null=True, blank=True)  # 0–1; None when a verdict is missing
    section_scores = models.JSONField(default=dict, blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["item", "pass_index"]
        constraints = [models.UniqueConstraint(fields=["item", "pass_index"], name="eval_judgement_unique")]


class AnswerFeedback(models.Model):
    """A user's accept or reject of a fused answer in the chatroom, with an optional note."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="answer_feedback")
    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="feedback")
    accepted = models.BooleanField()
    note = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
