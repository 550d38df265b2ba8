"""Episodes: the policy acts over several turns; tools or an environment answer in between.

    for each turn (all unfinished episodes in one batched engine call, from their token ids):
        the policy samples a turn                                   (policy tokens: loss mask 1)
        a turn that stopped → environment.step(turn), episodes concurrently
        observations → inserted as chat-template tokens             (inserted tokens: loss mask 0)
    an episode ends on a turn without calls, when the environment says done, at max_turns,
    at the episode token budget, or on a turn cut at max_new_tokens

The result is a `RolloutBatch` like a one-turn rollout: the first prompt, then one completion span
holding every turn and every inserted message, attended to throughout, with `policy_mask` 1 only on
the sampled tokens and behaviour log-probs 0 elsewhere. The trainer's log-probs are taken over
exactly these ids; nothing is decoded and re-encoded (`grpokit.agents.chat`).

Reproducible: episode k of prompt j draws turn t's random numbers from a generator seeded by
(prompt seed, k, t) alone, so the episode does not depend on which others share the batch
(and a resumed run samples the same episodes).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grpokit.agents.chat import EpisodeTemplate
from grpokit.agents.tools import ToolStats
from grpokit.errors import GrpokitError
from grpokit.rollout.prompts import left_pad
from grpokit.rollout.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch, SamplingParams

# Why an episode ended (Trajectory.end); "budget" and "length" count as truncated (finish reason "length").
END_ANSWER = "answer"  # a turn without tool calls
END_DONE = "done"  # the environment said done
END_MAX_TURNS = "max_turns"
END_BUDGET = "budget"  # the episode's token budget is used up
END_LENGTH = "length"  # a turn reached max_new_tokens without its stop token
END_REASONS = (END_ANSWER, END_DONE, END_MAX_TURNS, END_BUDGET, END_LENGTH)

_SEED_MODULUS = 2**63


class AgentEnvironmentError(GrpokitError, RuntimeError):
    """An environment's reset or step raised (a bug in the environment, not something the model did)."""

    kind = "agent environment"


@dataclass
class AgentSettings:
    max_turns: int = 4  # policy turns per episode
    max_episode_tokens: int = 512  # policy + inserted tokens after the first prompt
    max_workers: int = 8  # episodes whose environment steps run at once


@dataclass
class Trajectory:
    """One episode as the rewards, logs and report see it."""

    messages: list[dict]  # first messages, then assistant / tool (or environment) messages in order
    turns: int = 0
    end: str = END_ANSWER
    tool_stats: ToolStats = field(default_factory=ToolStats)
    environment_reward: float | None = None
    policy_tokens: int = 0
    inserted_tokens: int = 0
    step_seconds: float = 0.0  # in the environment's step (tool calls included)
    row: dict = field(default_factory=dict, repr=False)  # the data-set row the episode started from

    @property
    def final_answer(self) -> str:
        """The last assistant message's text ("" when there is none)."""
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return message["content"]
        return ""

    def to_dict(self) -> dict:
        s = self.tool_stats
        return {"messages": self.messages, "turns": self.turns, "end": self.end,
                "tool_calls": {"valid": s.valid, "malformed": s.malformed, "failed": s.failed},
                "tool_seconds": s.seconds, "step_seconds": self.step_seconds, "environment_reward": self.environment_reward,
                "tokens": {"policy": self.policy_tokens, "inserted": self.inserted_tokens}}


@dataclass
class _Episode:
    environment: Any
    trajectory: Trajectory
    seed: int
    prompt_text: str
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # the completion span
    policy: list[int] = field(default_factory=list)  # 1 = sampled by the policy
    logprobs: list[float] = field(default_factory=list)
    done: bool = False


class EpisodeEngine:
    """Runs batches of episodes with a rollout engine that samples from token ids (`generate_ids`)."""

    def __init__(self, engine: Any, tokenizer: Any, environment_factory: Callable[[], Any], *,
                 tool_schemas: list[dict], settings: AgentSettings | None = None, chat_template: str | None = None):
        if not hasattr(engine, "generate_ids"):
            raise ValueError(f"rollout engine {type(engine).__name__} cannot sample from token ids; "
                             "multi-turn episodes need one that can (inprocess, vllm_server, vllm_colocate)")
        self.engine = engine
        self.tokenizer = tokenizer
        self.environment_factory = environment_factory
        self.settings = settings or AgentSettings()
        self.template = EpisodeTemplate(tokenizer, tool_schemas, chat_template)
        self.pool = concurrent.futures.ThreadPoolExecutor(self.settings.max_workers, thread_name_prefix="grpokit-env")

    @property
    def name(self) -> str:
        return getattr(self.engine, "name", type(self.engine).__name__)

    def sync_weights(self, model: Any) -> None:
        self.engine.sync_weights(model)

    def generate_episodes(self, rows: Sequence[dict], n: int | Sequence[int], sampling: SamplingParams, *,
                          prompt_seeds: Sequence[int] | None = None) -> RolloutBatch:
        """n episodes per data-set row (or n[j] for row j), prompt-major, group id j for those of `rows[j]`.

        `prompt_seeds[j]` seeds the episodes of `rows[j]` alone (see the module docstring); None: seeds
        derived from `sampling.seed` and the row's position."""
        sizes = [n] * len(rows) if isinstance(n, int) else list(n)
        if len(sizes) != len(rows) or any(size < 1 for size in sizes):
            raise ValueError(f"need one group size >= 1 per row; got {sizes} for {len(rows)} rows")
        if prompt_seeds is None:
            base = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
            prompt_seeds = [base * 1_000_003 + j for j in range(len(rows))]
        episodes = []
        for row, prompt_seed, size in zip(rows, prompt_seeds, sizes):
            for k in range(size):
                environment = self.environment_factory()
                messages = _call_environment(environment.reset, dict(row), what="reset")
                text, ids = self.template.prompt_ids(messages)
                trajectory = Trajectory(messages=[dict(m) for m in messages], row=dict(row))
                episodes.append(_Episode(environment, trajectory, (prompt_seed * 7919 + k) % _SEED_MODULUS,
                                         text, ids))
        for turn in range(self.settings.max_turns):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            self._policy_turn(active, sampling, turn)
            stepping = [e for e in active if not e.done]
            for episode, outcome in zip(stepping, self.pool.map(self._step, stepping)):
                self._insert(episode, *outcome, last_turn=turn == self.settings.max_turns - 1)
        return self._assemble(episodes, sizes)

    # ------------------------------------------------------------------ one turn
    def _policy_turn(self, active: list[_Episode], sampling: SamplingParams, turn: int) -> None:
        budget = self.settings.max_episode_tokens
        contexts = [e.prompt_ids + e.ids for e in active]
        seeds = [(e.seed * 1_000_003 + turn) % _SEED_MODULUS for e in active]
        limit = min(sampling.max_new_tokens, max(budget - len(e.ids) for e in active))
        batch = self.engine.generate_ids(contexts, 1, dataclasses.replace(sampling, max_new_tokens=limit),
                                         prompt_seeds=seeds)
        lengths = batch.completion_mask.sum(dim=1).tolist()
        for row, episode in enumerate(active):
            room = budget - len(episode.ids)
            length = min(lengths[row], room)
            ids = batch.completion_ids[row, :length].tolist()
            episode.ids += ids
            episode.policy += [1] * length
            episode.logprobs += batch.behaviour_logprobs[row, :length].float().tolist()
            episode.trajectory.turns += 1
            episode.trajectory.policy_tokens += length
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            episode.trajectory.messages.append({"role": "assistant", "content": text})
            stopped = batch.finish_reasons[row] == FINISH_STOP and length == lengths[row]
            if not stopped:  # cut: by the episode budget, or at max_new_tokens
                episode.done = True
                episode.trajectory.end = END_BUDGET if length >= room else END_LENGTH

    def _step(self, episode: _Episode) -> tuple[list[dict], float | None, bool, float]:
        started = time.perf_counter()
        observations, reward, done = _call_environment(episode.environment.step, episode.trajectory.messages[-1],
                                                       what="step")
        return list(observations or []), reward, bool(done), time.perf_counter() - started

    def _insert(self, episode: _Episode, observations: list[dict], reward: float | None, done: bool,
                seconds: float, *, last_turn: bool) -> None:
        trajectory = episode.trajectory
        trajectory.step_seconds += seconds
        if reward is not None:
            trajectory.environment_reward = float(reward)
        stats = getattr(episode.environment, "tool_stats", None)
        if stats is not None:
            trajectory.tool_stats = stats
        trajectory.messages.extend(dict(m) for m in observations)
        if done or not observations:
            episode.done, trajectory.end = True, END_DONE if done else END_ANSWER
            return
        if last_turn:
            episode.done, trajectory.end = True, END_MAX_TURNS
            return
        stop_text = self.tokenizer.decode(episode.ids[-1:], skip_special_tokens=False) if episode.ids else ""
        inserted = self.template.encode(self.template.inserted_text(observations, stop_text))
        if len(episode.ids) + len(inserted) >= self.settings.max_episode_tokens:  # no room left for a turn
            episode.done, trajectory.end = True, END_BUDGET
            return
        episode.ids += inserted
        episode.policy += [0] * len(inserted)
        episode.logprobs += [0.0] * len(inserted)
        trajectory.inserted_tokens += len(inserted)

    # ------------------------------------------------------------------ the batch
    def _assemble(self, episodes: list[_Episode], sizes: list[int]) -> RolloutBatch:
        device = getattr(self.engine, "device", torch.device("cpu"))
        pad = self.engine.pad_token_id
        prompt_ids, prompt_mask = left_pad([e.prompt_ids for e in episodes], pad)
        width = max(1, max(len(e.ids) for e in episodes))
        rows = len(episodes)
        completion_ids = torch.full((rows, width), pad, dtype=torch.long)
        completion_mask = torch.zeros((rows, width), dtype=torch.long)
        policy_mask = torch.zeros((rows, width), dtype=torch.long)
        behaviour = torch.zeros((rows, width), dtype=torch.float32)
        for row, e in enumerate(episodes):
            length = len(e.ids)
            completion_ids[row, :length] = torch.tensor(e.ids, dtype=torch.long)
            completion_mask[row, :length] = 1
            policy_mask[row, :length] = torch.tensor(e.policy, dtype=torch.long)
            behaviour[row, :length] = torch.tensor(e.logprobs, dtype=torch.float32)
        truncated = (END_BUDGET, END_LENGTH)
        return RolloutBatch(
            prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device),
            completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
            behaviour_logprobs=behaviour.to(device),
            finish_reasons=[FINISH_LENGTH if e.trajectory.end in truncated else FINISH_STOP for e in episodes],
            group_ids=torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes)).to(device),
            prompts=[e.prompt_text for e in episodes],
            completions=[e.trajectory.final_answer for e in episodes],
            policy_mask=policy_mask.to(device),
            trajectories=[e.trajectory for e in episodes],
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _call_environment(method: Callable[[Any], Any], argument: Any, *, what: str) -> Any:
    try:
        return method(argument)
    except Exception as error:
        owner = type(getattr(method, "__self__", method)).__name__
        raise AgentEnvironmentError(f"{owner}.{what} raised {type(error).__name__}: {error}") from error


def episode_metrics(trajectories: Sequence[Trajectory], prefix: str = "agent/") -> dict[str, float]:
    """Means per episode: turns, tool calls (valid / malformed / failed), tool seconds, tokens by role;
    the share of episodes with at least one well-formed call, and of each way an episode ended."""
    count = max(len(trajectories), 1)

    def mean(values) -> float:
        return float(sum(values)) / count

    metrics = {
        "turns_mean": mean(t.turns for t in trajectories),
        "tool_calls_valid": mean(t.tool_stats.valid for t in trajectories),
        "tool_calls_malformed": mean(t.tool_stats.malformed for t in trajectories),
        "tool_calls_failed": mean(t.tool_stats.failed for t in trajectories),
        "tool_seconds": mean(t.tool_stats.seconds for t in trajectories),
        "step_seconds": mean(t.step_seconds for t in trajectories),
        "tokens_policy": mean(t.policy_tokens for t in trajectories),
        "tokens_inserted": mean(t.inserted_tokens for t in trajectories),
        "episodes_with_valid_call": mean(t.tool_stats.valid > 0 for t in trajectories),
    }
    for reason in END_REASONS:
        metrics[f"end_{reason}_frac"] = mean(t.end == reason for t in trajectories)
    return {prefix + k: v for k, v in metrics.items()}
