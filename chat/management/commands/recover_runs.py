from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat.runs import recover_interrupted_runs


class Command(BaseCommand):
    help = "Mark runs left running by a process that died as interrupted (run at start-up)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--all",
            action="store_true",
            help="Every running run, not only those whose process went silent (single-process deployments).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = recover_interrupted_runs(all_processes=options["all"])
        if count:
            self.stdout.write(f"Marked {count} run(s) as interrupted.")
