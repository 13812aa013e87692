"""model_config.toml parsing, validation and resolution (orchestrator.md "model_config.toml")."""

import pytest

from services.servicekit.model_config import (
    DEFAULT_MODEL_CONFIG_TOML,
    TASK_NAMES,
    Budget,
    ModelConfigError,
    UnknownTierError,
    load_model_config,
)

LAYERED = """
[defaults]
fallback_model = "default/model"
fallback_temperature = 0.5
fallback_max_tokens = 900
context_tokens = 16000

[tasks.chat_companion]
model = ["chat/primary", "chat/second"]
fallback = ["chat/third", "chat/fourth"]
retry_depth = 2
top_p = 0.9
stop = ["\\nUser:", "\\n"]
budget = { system = 0.25, memory = 0.2 }

[tasks.chat_companion.tiers.premium]
model = "premium/model"
temperature = 1.1
allow_traits = ["formality", "language"]

[tasks.chat_companion.tiers.free]
retry_depth = 0

[tasks.summarization]
temperature = 0.3

[tasks.pde_decision]
filter_prompt = "Decide."
ghosting = false
"""


@pytest.fixture
def layered():
    return load_model_config(LAYERED)


def test_default_file_is_valid_and_offline():
    config = load_model_config(DEFAULT_MODEL_CONFIG_TOML)
    assert not any(config.configured(task) for task in TASK_NAMES)
    assert not config.configured("chat_companion", "premium")
    chat = config.resolve("chat_companion")
    assert (chat.temperature, chat.max_tokens, chat.context_tokens) == (0.85, 400, 8192)
    assert chat.budget == Budget(0.20, 0.25, 0.35, 0.20)
    assert chat.allow_traits is None
    premium = config.resolve("chat_companion", "premium")
    assert premium.allow_traits == frozenset({"formality", "language", "verbosity"})
    assert premium.max_tokens == 600 and premium.temperature == 0.85
    assert config.tier_names() == frozenset({"premium"})


def test_empty_file_gives_chat_narrative_defaults():
    chat = load_model_config("").resolve("chat_companion")
    assert (chat.models, chat.temperature, chat.max_tokens) == ((), 0.85, 400)
    other = load_model_config("").resolve("summarization")
    assert (other.temperature, other.max_tokens) == (None, None)


def test_model_list_fallbacks_truncated_to_retry_depth(layered):
    chat = layered.resolve("chat_companion")
    # [primary] + (rest of model list + fallback)[:retry_depth]
    assert chat.models == ("chat/primary", "chat/second", "chat/third")


def test_retry_depth_unset_allows_every_fallback():
    config = load_model_config('[tasks.summarization]\nmodel = ["a", "b"]\nfallback = ["c"]\n')
    assert config.resolve("summarization").models == ("a", "b", "c")


def test_retry_depth_zero_keeps_only_primary(layered):
    assert layered.resolve("chat_companion", "free").models == ("chat/primary",)


def test_precedence_tier_over_task_over_defaults(layered):
    premium = layered.resolve("chat_companion", "premium")
    assert premium.models == (
        "premium/model",
        "chat/third",
        "chat/fourth",
    )  # tier model + task fallback, depth 2
    assert premium.temperature == 1.1  # tier
    assert premium.top_p == 0.9  # task
    assert premium.max_tokens == 900  # [defaults] beats the built-in 400
    assert premium.context_tokens == 16000  # [defaults]
    assert premium.stop == ("\nUser:", "\n")  # stop sequences are not stripped
    assert premium.budget == Budget(system=0.25, memory=0.2, history=0.35, response=0.20)
    assert premium.sampling_params() == {
        "temperature": 1.1,
        "max_tokens": 900,
        "top_p": 0.9,
        "stop": ["\nUser:", "\n"],
    }


def test_task_without_model_uses_defaults_fallback_model(layered):
    summary = layered.resolve("summarization")
    assert summary.models == ("default/model",)
    assert summary.temperature == 0.3 and summary.max_tokens == 900
    assert layered.configured("summarization")


def test_pde_extras(layered):
    assert dict(layered.resolve("pde_decision").extra) == {
        "filter_prompt": "Decide.",
        "ghosting": False,
        "structured_output": False,
    }
    assert dict(load_model_config("").resolve("pde_decision").extra)["ghosting"] is True


def test_unknown_tier(layered):
    with pytest.raises(UnknownTierError, match="gold") as raised:
        layered.resolve("chat_companion", "gold")
    assert raised.value.known == frozenset({"premium", "free"})
    assert isinstance(raised.value, ValueError)
    with pytest.raises(UnknownTierError):
        layered.resolve("summarization", "premium")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[tasks.chat_companion]\ntemperature = 2.5",
            "tasks.chat_companion.temperature: expected a number in [0, 2]",
        ),
        ("[tasks.chat_companion]\ntemperature = true", "tasks.chat_companion.temperature: expected a number"),
        (
            "[tasks.chat_companion]\nmax_tokens = 0",
            "tasks.chat_companion.max_tokens: expected an integer ≥ 1",
        ),
        ("[tasks.summarization]\ntop_p = 1.5", "tasks.summarization.top_p: expected a number in [0, 1]"),
        ("[tasks.summarization]\npresence_penalty = -3", "tasks.summarization.presence_penalty"),
        ("[tasks.summarization]\nfrequency_penalty = 2.1", "tasks.summarization.frequency_penalty"),
        (
            "[tasks.summarization]\nretry_depth = -1",
            "tasks.summarization.retry_depth: expected an integer ≥ 0",
        ),
        ("[tasks.summarization]\nmodel = 3", "tasks.summarization.model: expected a string or a list"),
        ("[tasks.summarization]\nmodel = []", "tasks.summarization.model: expected at least one model"),
        (
            '[tasks.summarization]\nmodel = ["a", ""]',
            "tasks.summarization.model[1]: expected a non-empty string",
        ),
        ("[tasks.summarization]\nfallback = [1]", "tasks.summarization.fallback[0]"),
        ('[tasks.summarization]\nstop = ["a","b","c","d","e"]', "tasks.summarization.stop: at most 4"),
        (
            "[tasks.summarization]\ncontext_tokens = 10",
            "tasks.summarization.context_tokens: expected an integer ≥ 256",
        ),
        ("[tasks.summarization]\ntemprature = 0.2", "tasks.summarization.temprature: unknown key"),
        ("[tasks.summarization]\nallow_traits = []", "tasks.summarization.allow_traits: unknown key"),
        ("[tasks.summarization]\nfilter_prompt = 'x'", "tasks.summarization.filter_prompt: unknown key"),
        ("[tasks.chitchat]\nmodel = 'x'", "tasks.chitchat: unknown task"),
        ("[task.chat_companion]", "task: unknown top-level table"),
        ("[defaults]\ntemperature = 0.3", "defaults.temperature: unknown key"),
        (
            "[defaults]\nfallback_temperature = 9",
            "defaults.fallback_temperature: expected a number in [0, 2]",
        ),
        ("[defaults]\nfallback_max_tokens = 'many'", "defaults.fallback_max_tokens: expected an integer"),
        ("[tasks.pde_decision]\nghosting = 'no'", "tasks.pde_decision.ghosting: expected true or false"),
        (
            "[tasks.pde_decision]\nstructured_output = 1",
            "tasks.pde_decision.structured_output: expected true",
        ),
        (
            "[tasks.pde_decision]\nfilter_prompt = ''",
            "tasks.pde_decision.filter_prompt: expected a non-empty",
        ),
        ("[tasks.embedding]\ndimensions = 0", "tasks.embedding.dimensions: expected an integer ≥ 1"),
        (
            "[tasks.chat_companion]\nbudget = { system = 0.5, memory = 0.5, history = 0.1 }",
            "tasks.chat_companion.budget: shares must sum to at most 1",
        ),
        (
            "[tasks.chat_companion]\nbudget = { tools = 0.1 }",
            "tasks.chat_companion.budget.tools: unknown key",
        ),
        (
            "[tasks.chat_companion]\nbudget = { system = 1.2 }",
            "tasks.chat_companion.budget.system: expected a number",
        ),
        ("[tasks.chat_companion]\nbudget = 0.2", "tasks.chat_companion.budget: expected a table"),
        (
            "[tasks.chat_companion]\nbudget = { response = 0 }",
            "tasks.chat_companion.budget.response: expected a share > 0",
        ),
        (
            "[tasks.chat_companion.tiers.premium]\nallow_traits = ['Bad Tag']",
            "tasks.chat_companion.tiers.premium.allow_traits[0]: expected a trait tag",
        ),
        (
            "[tasks.chat_companion.tiers.premium]\ntemperature = -1",
            "tasks.chat_companion.tiers.premium.temperature",
        ),
        (
            "[tasks.chat_companion.tiers.premium]\ntiers = {}",
            "tasks.chat_companion.tiers.premium.tiers: unknown key",
        ),
        ("[tasks.chat_companion.tiers.Premium]", "tasks.chat_companion.tiers.Premium: tier names must match"),
        ("[tasks.chat_companion]\ntiers = 3", "tasks.chat_companion.tiers: expected a table"),
        ("[tasks]\nchat_companion = 1", "tasks.chat_companion: expected a table"),
        ("[tasks.chat_companion\n", "model_config.toml: invalid TOML"),
    ],
)
def test_every_validation_error_names_its_key(toml, message):
    with pytest.raises(ModelConfigError) as raised:
        load_model_config(toml)
    assert str(raised.value).startswith(message) or message in str(raised.value)
    assert str(raised.value).split(":")[0] == message.split(":")[0]


def test_duplicate_models_in_chain_are_tried_once():
    config = load_model_config('[tasks.summarization]\nmodel = ["a", "b"]\nfallback = ["a", "c"]\n')
    assert config.resolve("summarization").models == ("a", "b", "c")
