"""Per-task LLM access from model_config.toml (`MODEL_CONFIG_PATH`).

`llm_for_task(env, "affinity_evaluation")` → a `TaskLlm` when the task has a model configured and a
provider is reachable (API key or LLM_BASE_URL), else None: the caller then uses its offline,
rule-based path. A task with no model configured and no API key always uses the offline path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.servicekit.model_config import (
    DEFAULT_MODEL_CONFIG_TOML,
    ModelConfig,
    ModelConfigError,
    ResolvedTask,
    load_model_config,
)

from .config import ConfigError, Env
from .llm import LlmClient, llm_endpoint_from_env
from .model_chain import Attempt, ChainFailed, run_model_chain

log = logging.getLogger("rapport.tasks")


def load_model_config_from_env(env: Env | None = None) -> ModelConfig:
    """The validated model_config.toml; an invalid file stops start-up naming the bad key."""
    env = env or Env()
    path = env.str("MODEL_CONFIG_PATH")
    if not path:
        return load_model_config(DEFAULT_MODEL_CONFIG_TOML)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("MODEL_CONFIG_PATH", "the path of a readable model_config.toml", path)
    try:
        return load_model_config(file.read_text())
    except ModelConfigError as error:
        raise ConfigError("MODEL_CONFIG_PATH", f"a valid model_config.toml ({file}: {error})") from None


@dataclass
class TaskLlm:
    """A task's model chain and sampling, with one client to the configured provider."""

    client: LlmClient
    resolved: ResolvedTask

    @property
    def models(self) -> tuple[str, ...]:
        return self.resolved.models

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], *, json_mode: bool = False
    ) -> tuple[str, dict[str, Any], str]:
        """Try each model of the chain in turn → (text, usage, model). Raises the last model's error."""
        params: dict[str, Any] = self.resolved.sampling_params()
        if json_mode and self.resolved.extra.get("structured_output", True):
            params["response_format"] = {"type": "json_object"}

        async def attempt(current: Attempt) -> tuple[str, dict[str, Any], str]:
            return await self.client.complete(current.model, messages, params=params)

        try:
            return await run_model_chain(self.models, attempt, task=self.resolved.task)
        except ChainFailed as failed:
            raise failed.cause from None


def llm_for_task(
    env: Env, task: str, config: ModelConfig | None = None, client: LlmClient | None = None
) -> TaskLlm | None:
    config = config or load_model_config_from_env(env)
    resolved = config.resolve(task)
    if not resolved.models:
        return None
    if client is None:
        endpoint = llm_endpoint_from_env(env)
        if endpoint is None:
            log.info("task %s has models configured but no provider (no API key): using the offline path", task)
            return None
        client = LlmClient(endpoint)
    return TaskLlm(client=client, resolved=resolved)
