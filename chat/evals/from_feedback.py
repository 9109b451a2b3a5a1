"""Tasks made from the user's accepted and rejected answers: a quick check of a new preset
against old prompts.

Each judged answer becomes a task whose problem is the old prompt. The rubric is what the user
told us:

* **accepted**: the new answer should cover what the accepted one covered, and not contradict it;
* **rejected**: it should avoid what the user's note says was wrong (or, without a note, be
  better than the rejected answer), and it loses points for repeating the rejected answer.

The old answers are quoted into the criteria (cut to ``EXCERPT_CHARS``); the judge protocol
defuses any tags in them, so an old answer cannot speak to the judge.
"""

from __future__ import annotations

from django.contrib.auth.models import User

from chat.evals.tasks import Criterion, Task
from chat.models import AnswerFeedback

EXCERPT_CHARS = 1500
DEFAULT_LIMIT = 50


def _excerpt(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _accepted(answer: str) -> tuple[Criterion, ...]:
    quoted = _excerpt(answer)
    return (
        Criterion(
            "covers-accepted",
            f"Covers the main points of this earlier answer, which the user accepted: «{quoted}»",
            2.0,
        ),
        Criterion(
            "agrees-with-accepted", f"Does not contradict the facts of that accepted answer: «{quoted[:300]}»", 1.0
        ),
    )


def _rejected(answer: str, note: str) -> tuple[Criterion, ...]:
    quoted = _excerpt(answer)
    first = (
        Criterion(
            "avoids-rejected-flaw", f"Avoids what made the user reject an earlier answer: «{_excerpt(note)}»", 2.0
        )
        if note.strip()
        else Criterion(
            "better-than-rejected",
            f"Is clearly better than this earlier answer, which the user rejected: «{quoted}»",
            2.0,
        )
    )
    return (
        first,
        Criterion(
            "repeats-rejected", f"Repeats the rejected answer's main claims without improving on them: «{quoted}»", -1.0
        ),
    )


def feedback_tasks(*, user: User, limit: int | None = DEFAULT_LIMIT) -> list[Task]:
    """The user's judged answers (newest first) as tasks; only the user's own feedback."""
    rows = (
        AnswerFeedback.objects.filter(user=user, run__user=user)
        .select_related("run__turn")
        .order_by("-updated_at", "-pk")
    )
    tasks: list[Task] = []
    seen: set[str] = set()
    for feedback in rows:
        if limit and len(tasks) >= limit:
            break
        run = feedback.run
        prompt = run.turn.prompt.strip()
        if not prompt or prompt in seen:  # the same prompt judged twice: its newest verdict
            continue
        seen.add(prompt)
        tasks.append(
            Task(
                id=f"feedback-{run.pk.hex}",
                problem=prompt,
                criteria=_accepted(run.answer) if feedback.accepted else _rejected(run.answer, feedback.note),
                domain="Accepted before" if feedback.accepted else "Rejected before",
            )
        )
    return tasks
