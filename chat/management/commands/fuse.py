"""`manage.py fuse "question" --panel A,B --analyst X --writer Y [--json]` — the pipeline in a terminal.

Progress goes to stderr (a line per member state change, no flood of tokens); the fused answer
(or one JSON object with --json) goes to stdout. Ctrl-C cancels: every upstream connection is
closed before the command exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from chat.engine import build_limits, build_registry, known_secrets
from chat.fusion.catalogue import CatalogueError, fetch_models, unknown_models
from chat.fusion.client import ChatClient
from chat.fusion.providers import UnknownProvider
from chat.fusion.pipeline import FusionRun
from chat.fusion.types import (
    AnalysisCompleted,
    AnalysisDegraded,
    AnalysisStarted,
    CallRecord,
    FinalStarted,
    FusionRequest,
    ModelSpec,
    PanelAdded,
    PanelCompleted,
    PanelDelta,
    PanelFailed,
    PipelineEvent,
    RunCompleted,
    RunFailed,
)


def _models(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


class Command(BaseCommand):
    help = "Run one fusion from the terminal: panel → analysis → fused answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("question")
        parser.add_argument("--panel", required=True, help="Comma-separated model ids (1–8).")
        parser.add_argument("--analyst", required=True)
        parser.add_argument("--writer", required=True)
        parser.add_argument("--fallback-analyst")
        parser.add_argument("--fallback-writer")
        parser.add_argument("--temperature", type=float, help="Temperature of the panel members.")
        parser.add_argument("--max-tokens", type=int, help="Max tokens of each panel member.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the answer.")

    def handle(self, *args: Any, **options: Any) -> None:
        panel = _models(options["panel"])
        if not 1 <= len(panel) <= 8:
            raise CommandError("--panel needs 1 to 8 model ids, separated by commas.")
        request = FusionRequest(
            messages=[{"role": "user", "content": options["question"]}],
            panel=[ModelSpec(m, temperature=options["temperature"], max_tokens=options["max_tokens"]) for m in panel],
            analyst=ModelSpec(options["analyst"]),
            writer=ModelSpec(options["writer"]),
            fallback_analyst=ModelSpec(options["fallback_analyst"]) if options["fallback_analyst"] else None,
            fallback_writer=ModelSpec(options["fallback_writer"]) if options["fallback_writer"] else None,
        )
        self._check_models(
            [
                s.model
                for s in (
                    *request.panel,
                    request.analyst,
                    request.writer,
                    request.fallback_analyst,
                    request.fallback_writer,
                )
                if s
            ]
        )
        code = asyncio.run(self._run(request, as_json=options["json"]))
        if code:
            sys.exit(code)

    def _check_models(self, models: list[str]) -> None:
        """Refuse unknown model ids before any paid call, against each provider's live /models."""
        registry = build_registry()
        wanted: dict[str, list[tuple[str, str]]] = {}
        for model in dict.fromkeys(models):
            try:
                provider, sent = registry.resolve(model)
            except UnknownProvider as exc:
                raise CommandError(str(exc)) from None
            wanted.setdefault(provider.name, []).append((model, sent))
        errors: list[str] = []
        for name, requested in wanted.items():
            try:
                listed = fetch_models(registry.get(name))
            except CatalogueError as exc:
                # A provider without a model list must stay usable: warn, do not block.
                self.stderr.write(
                    f"warning: the model list of {name} could not be fetched ({exc}); "
                    f"not checking {', '.join(m for m, _ in requested)}"
                )
                continue
            title = "OpenRouter" if name == registry.default else f"provider {name!r}"
            errors += unknown_models(requested, listed, provider=title)
        if errors:
            raise CommandError(" ".join(errors))

    async def _run(self, request: FusionRequest, *, as_json: bool) -> int:
        client = ChatClient(build_registry(), limits=build_limits(), extra_secrets=known_secrets())
        fusion = FusionRun(request, client)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, fusion.cancel)
        loop.add_signal_handler(signal.SIGTERM, fusion.cancel)
        progress = _Progress(self.stderr, [m.model for m in request.panel])
        result: RunCompleted | RunFailed | None = None
        contents: dict[int, dict[str, Any]] = {}
        try:
            async for event in fusion.events():
                progress.on(event)
                if isinstance(event, PanelCompleted):
                    contents[event.slot] = {
                        "model": event.model,
                        "status": "complete",
                        "content": event.content,
                        **_metrics(event.record),
                    }
                elif isinstance(event, PanelFailed):
                    contents[event.slot] = {
                        "model": event.model,
                        "status": "failed",
                        "content": event.partial_content,
                        "error": event.error.to_dict(),
                        **_metrics(event.record),
                    }
                elif isinstance(event, (RunCompleted, RunFailed)):
                    result = event
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
            await client.aclose()

        responses = [contents[k] for k in sorted(contents)]
        if isinstance(result, RunCompleted):
            if as_json:
                self.stdout.write(
                    json.dumps(
                        {
                            "answer": result.answer,
                            "analysis": result.analysis,
                            "analysis_error": result.analysis_error,
                            "responses": responses,
                            "failed_models": result.failed_models,
                            "usage": result.usage.to_dict(),
                            "timings": result.timings,
                        },
                        indent=2,
                    )
                )
            else:
                self.stdout.write(result.answer)
            return 0
        reason = f"{result.kind}: {result.message}" if isinstance(result, RunFailed) else "no result"
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "answer": None,
                        "error": {"kind": getattr(result, "kind", "error"), "message": reason},
                        "responses": responses,
                        "failed_models": getattr(result, "failed_models", []),
                        "usage": result.usage.to_dict() if result else {},
                    },
                    indent=2,
                )
            )
        self.stderr.write(f"fuse failed — {reason}")
        return 130 if getattr(result, "kind", "") == "cancelled" else 1


def _metrics(record: CallRecord) -> dict[str, Any]:
    return {"ttft_ms": record.ttft_ms, "duration_ms": record.duration_ms, "usage": record.usage.to_dict()}


class _Progress:
    """One stderr line per state change of a member, the analyst and the writer."""

    def __init__(self, out: OutputWrapper, models: list[str]) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.width = max(len(m) for m in models)
        self.chars: dict[int, int] = {}

    def line(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    def on(self, event: PipelineEvent) -> None:
        if isinstance(event, PanelAdded):
            self.chars[event.slot] = 0
            self.line(f"{event.model:<{self.width}}  waiting")
        elif isinstance(event, PanelDelta):
            if self.chars.get(event.slot, 0) == 0:
                self.line(f"{event.model:<{self.width}}  streaming")
            self.chars[event.slot] = self.chars.get(event.slot, 0) + len(event.delta)
        elif isinstance(event, PanelCompleted):
            r = event.record
            cost = f", ${r.usage.cost:.4f}" if r.usage.cost is not None else ""
            self.line(
                f"{event.model:<{self.width}}  done  {r.usage.completion_tokens} tokens, "
                f"ttft {r.ttft_ms} ms, {r.duration_ms} ms{cost}"
            )
        elif isinstance(event, PanelFailed):
            self.line(f"{event.model:<{self.width}}  FAILED  {event.error.kind}: {event.error.message}")
        elif isinstance(event, AnalysisStarted):
            self.line(f"analysis by {event.analyst_model} …")
        elif isinstance(event, AnalysisCompleted):
            self.line("analysis done")
        elif isinstance(event, AnalysisDegraded):
            self.line(f"analysis degraded: {event.reason}")
        elif isinstance(event, FinalStarted):
            self.line(f"writing the fused answer with {event.writer_model} …")
        elif isinstance(event, RunCompleted):
            cost = f", ${event.usage.cost:.4f}" if event.usage.cost is not None else ""
            self.line(f"completed in {event.timings.get('total')} ms, {event.usage.total_tokens} tokens{cost}")
