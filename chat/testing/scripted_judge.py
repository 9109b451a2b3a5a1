"""The scripted upstream as a rubric judge (chat.evals.judge's protocol).

A request whose messages carry ``FUSION_RUBRIC_VERDICTS`` gets verdicts for the
``<criterion id="…">`` blocks of its first user message (on a repair, for the ids it asks for
again). Script keys:

``verdicts``            ``{criterion id: true | false | "omit", "*": default}``: fixed verdicts;
                        ``"omit"`` leaves the id out of the reply (a judge failure).
                        Without it, a criterion is met when at least a third of its
                        requirement's longer words appear in the answer, or else by a stable
                        hash of (id, answer) that favours longer answers: deterministic, so
                        a fused answer tends to score above a solo one, as in the real claim.
``judge_first_reply``   the text of the first reply (e.g. ``"not json"``); the repair call then
                        gets proper verdicts.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from chat.evals.judge import JUDGE_MARKER  # the protocol's marker

_CRITERION = re.compile(r'<criterion id="((?:[^"\\]|\\.)*)">(.*?)</criterion>', re.DOTALL)
_ANSWER = re.compile(r"<answer>\n?(.*?)\n?</answer>", re.DOTALL)
_ASKED_AGAIN = re.compile(r"one verdict for each of (.*)\.\s*$", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]{5,}")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def is_judge_request(messages: list[dict[str, Any]]) -> bool:
    return any(JUDGE_MARKER in _text(m) for m in messages)


def _met_by_words(cid: str, requirement: str, answer: str) -> bool:
    words = set(_WORD.findall(requirement.lower()))
    have = set(_WORD.findall(answer.lower()))
    if words and len(words & have) * 3 >= len(words):
        return True
    digest = hashlib.sha256(f"{cid}\0{answer}".encode()).digest()
    return digest[0] % 10 < min(8, 2 + len(answer) // 500)


def judge_reply(script: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    first = _text(users[0]) if users else ""
    criteria = [(json.loads(f'"{cid}"'), req) for cid, req in _CRITERION.findall(first)]
    answer_match = _ANSWER.search(first)
    answer = answer_match.group(1) if answer_match else ""
    repairing = any(m.get("role") == "assistant" for m in messages)
    if not repairing and "judge_first_reply" in script:
        return str(script["judge_first_reply"])
    if repairing and users:
        asked = _ASKED_AGAIN.search(_text(users[-1]))
        if asked:
            again = set(json.loads(f"[{asked.group(1)}]"))
            criteria = [(cid, req) for cid, req in criteria if cid in again]
    fixed = script.get("verdicts") or {}
    verdicts = []
    for cid, requirement in criteria:
        verdict = fixed.get(cid, fixed.get("*"))
        if verdict == "omit":
            continue
        met = _met_by_words(cid, requirement, answer) if verdict is None else bool(verdict)
        reason = "The answer covers this." if met else "The answer does not say this."
        verdicts.append({"id": cid, "met": met, "reason": reason})
    return json.dumps({"verdicts": verdicts})
