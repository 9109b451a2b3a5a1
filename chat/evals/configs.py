"""An evaluation's configurations: what each one is, made from a reference a user types.

References:

* ``preset:<key>``: a built-in preset (``preset:quality``) or one of the user's own, by its slug
  or id; ``builtin:<key>`` also works;
* ``solo:<model>``: one model answering alone, with the same tools as a panel member;
* ``panel:<m1>,<m2>,…[;analyst=<model>][;writer=<model>]``: an inline panel (analyst and writer
  default to the first member).

Every configuration gets the evaluation's research settings (the same tools and tool budget),
with the contamination guard's hosts added to its ``excluded_domains`` and ``blocked_domains``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from django.contrib.auth.models import User

from chat import presets
from chat.errors import NotFound, PresetError
from chat.models import Preset
from chat.panels import PanelError, parse_domain, parse_preset_config, parse_research

# The hosts that publish DRACO (perplexity-ai/draco on Hugging Face, its code and papers):
# every evaluation guards them unless the user edits the list.
DRACO_GUARD_HOSTS = ("huggingface.co", "hf.co", "github.com", "githubusercontent.com", "arxiv.org")
MAX_CONFIGS = 8
_KEY_RE = re.compile(r"[^a-z0-9]+")


class EvalConfigError(ValueError):
    """A configuration or setting a user gave is wrong; ``field`` names it."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def guard_hosts_parse(values: Any) -> list[str]:
    """The guard's host list, validated like a preset's domain lists."""
    hosts: list[str] = []
    for value in values or []:
        value = str(value).strip()
        if not value:
            continue
        try:
            host = parse_domain(value, "Guarded hosts")
        except PanelError as exc:
            raise EvalConfigError(str(exc), field="guard_hosts") from None
        if host not in hosts:
            hosts.append(host)
    return hosts


def research_parse(research: Any) -> dict[str, Any]:
    try:
        return parse_research(research)
    except PanelError as exc:
        raise EvalConfigError(str(exc), field="research") from None


def with_research(config: dict[str, Any], research: dict[str, Any], guard: list[str]) -> dict[str, Any]:
    """*config* with the evaluation's research settings, the guard's hosts excluded and blocked."""
    config = copy.deepcopy(config)
    merged = copy.deepcopy(research)
    for name in ("excluded_domains", "blocked_domains"):
        merged[name] = list(dict.fromkeys([*(merged.get(name) or []), *guard]))
    config["research"] = merged
    return config


def _key(name: str, taken: set[str]) -> str:
    base = _KEY_RE.sub("-", name.lower()).strip("-")[:60] or "config"
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def _preset(user: User, name: str) -> tuple[str, dict[str, Any]]:
    try:
        builtin = presets.builtin_get(key=name)
        return builtin.name, builtin.config
    except NotFound:
        pass
    row = Preset.objects.filter(user=user, slug=name).first()
    if row is None and name.isdigit():
        row = Preset.objects.filter(user=user, pk=int(name)).first()
    if row is None:
        builtins = ", ".join(b.key for b in presets.builtin_presets())
        raise EvalConfigError(
            f"No preset {name!r}: use a built-in ({builtins}) or the slug of one of your presets.", field="configs"
        )
    try:
        return row.name, presets.preset_resolve(user=user, ref=row.pk).config
    except PresetError as exc:
        raise EvalConfigError(str(exc), field="configs") from None


def _panel(spec: str) -> dict[str, Any]:
    members_part, *options = [p.strip() for p in spec.split(";")]
    members = [m.strip() for m in members_part.split(",") if m.strip()]
    if not members:
        raise EvalConfigError("An inline panel needs at least one model: panel:<model>,<model>…", field="configs")
    roles = {"analyst": members[0], "writer": members[0]}
    for option in options:
        name, _, value = option.partition("=")
        if name.strip() not in roles or not value.strip():
            raise EvalConfigError(
                f"Unknown panel option {option!r}: use ;analyst=<model> or ;writer=<model>.", field="configs"
            )
        roles[name.strip()] = value.strip()
    return {
        "members": [{"model": m} for m in members],
        "analyst": {"model": roles["analyst"]},
        "writer": {"model": roles["writer"]},
    }


def config_from_ref(
    *, user: User, ref: str, research: dict[str, Any], guard: list[str], taken: set[str] | None = None
) -> dict[str, Any]:
    """One stored configuration ``{key, name, kind, ref, config}`` for the reference *ref*."""
    ref = (ref or "").strip()
    kind, _, rest = ref.partition(":")
    rest = rest.strip()
    if not rest:
        raise EvalConfigError(
            f"{ref!r} is not a configuration: use preset:<key>, solo:<model> or panel:<model>,<model>…",
            field="configs",
        )
    if kind in ("preset", "builtin"):
        name, config = _preset(user, rest)
        stored_kind = "preset"
    elif kind == "solo":
        config = {"members": [{"model": rest}], "analyst": {"model": rest}, "writer": {"model": rest}}
        name, stored_kind = f"{rest} (solo)", "solo"
    elif kind == "panel":
        config = _panel(rest)
        name, stored_kind = "Panel: " + ", ".join(m["model"] for m in config["members"]), "panel"
    else:
        raise EvalConfigError(
            f"{ref!r} is not a configuration: use preset:<key>, solo:<model> or panel:<model>,<model>…",
            field="configs",
        )
    try:
        config = parse_preset_config(with_research(config, research, guard))
    except PanelError as exc:
        raise EvalConfigError(f"{ref}: {exc}", field="configs") from None
    key = _key(rest if stored_kind != "panel" else name, taken if taken is not None else set())
    return {"key": key, "name": name[:200], "kind": stored_kind, "ref": ref, "config": config}


def configs_from_refs(*, user: User, refs: list[str], research: Any, guard: list[str]) -> list[dict[str, Any]]:
    refs = [r for r in (str(r).strip() for r in refs) if r]
    if not refs:
        raise EvalConfigError("Choose at least one configuration to evaluate.", field="configs")
    if len(refs) > MAX_CONFIGS:
        raise EvalConfigError(f"At most {MAX_CONFIGS} configurations per evaluation.", field="configs")
    parsed_research = research_parse(research)
    taken: set[str] = set()
    result = []
    for ref in refs:
        config = config_from_ref(user=user, ref=ref, research=parsed_research, guard=guard, taken=taken)
        taken.add(config["key"])
        result.append(config)
    return result
