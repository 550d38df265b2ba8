"""Multi-process training: the pure helpers, and 1 process vs 2 gloo processes giving the same weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from grpokit.config_schema import ConfigError
from grpokit.trainers.distributed import (
    check_multiprocess_config,
    concat_group_ids,
    gather_objects,
    loss_scale,
    merge_reward_metrics,
    merge_update_stats,
    prompt_seed,
    shard_range,
    sum_over_ranks,
)

RUN_TIMEOUT_SECONDS = 150  # a hung collective must fail the test, not CI


# ---------------------------------------------------------------------- pure helpers
def test_each_rank_gets_a_contiguous_equal_slice_and_the_slices_tile_the_batch():
    assert [shard_range(8, 2, r) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_range(6, 3, r) for r in range(3)] == [(0, 2), (2, 4), (4, 6)]
    assert shard_range(5, 1, 0) == (0, 5)


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="evenly"):
        shard_range(6, 4, 0)


def test_prompt_seeds_are_stable_and_differ_by_step_index_and_position():
    seed = prompt_seed(17, 3, 0)
    assert seed == prompt_seed(17, 3, 0)
    assert 0 <= seed < 2**63
    assert len({seed, prompt_seed(18, 3, 0), prompt_seed(17, 4, 0), prompt_seed(17, 3, 1)}) == 4


def test_loss_scale_undoes_ddp_gradient_averaging():
    # DDP: (1/W) Σ_r ∇(s·L_r) must equal Σ_r ∇L_r.
    for world_size in (1, 2, 8):
        assert loss_scale(world_size) / world_size == 1.0


def test_group_ids_of_later_ranks_are_shifted_past_earlier_ones():
    ids = concat_group_ids([torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])])
    assert ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_merged_update_stats_are_the_global_token_weighted_means():
    # Rank 0 holds 3 of 4 global tokens with ratio 1.0, rank 1 holds 1 with ratio 2.0:
    # shares are 3/4 and 1/4, so the global token mean is 0.75·1 + 0.25·2 = 1.25.
    rank0 = (
        {"loss": 0.3, "ratio_mean": 0.75 * 1.0, "ratio_max": 1.0, "ratio_min": 1.0},
        {"ratio_mean": 0.75},
    )
    rank1 = (
        {"loss": 0.2, "ratio_mean": 0.25 * 2.0, "ratio_max": 2.0, "ratio_min": 2.0},
        {"ratio_mean": 0.25},
    )
    stats, weights = merge_update_stats([rank0, rank1])
    assert stats["loss"] == pytest.approx(0.5)
    assert stats["ratio_mean"] / weights["ratio_mean"] == pytest.approx(1.25)
    assert (stats["ratio_max"], stats["ratio_min"]) == (2.0, 1.0)


def test_merged_reward_metrics_equal_those_of_the_union():
    # Rank 0 scores [1, 0, None, 1], rank 1 scores [0, 0, 0, 1]: the union's 7 valid values have
    # mean 3/7 and population std sqrt(3/7 − 9/49) = sqrt(12/49).
    rank0 = {
        "rewards/r/mean": 2 / 3,
        "rewards/r/std": math.sqrt(2 / 9),
        "rewards/r/none_count": 1.0,
        "rewards/r/errors": 0.0,
        "rewards/r/seconds": 0.5,
    }
    rank1 = {
        "rewards/r/mean": 0.25,
        "rewards/r/std": math.sqrt(3 / 16),
        "rewards/r/none_count": 0.0,
        "rewards/r/errors": 1.0,
        "rewards/r/seconds": 0.25,
    }
    merged = merge_reward_metrics([(4, rank0), (4, rank1)])
    assert merged["rewards/r/mean"] == pytest.approx(3 / 7)
    assert merged["rewards/r/std"] == pytest.approx(math.sqrt(12 / 49))
    assert merged["rewards/r/none_count"] == 1.0
    assert (merged["rewards/r/errors"], merged["rewards/r/seconds"]) == (1.0, 0.5)


def _config(prompts=4, mini_batches=1, strategy="uniform"):
    from types import SimpleNamespace

    return SimpleNamespace(
        rollout=SimpleNamespace(prompts_per_step=prompts),
        training=SimpleNamespace(mini_batches=mini_batches),
        sampling=SimpleNamespace(strategy=strategy),
    )


def test_multiprocess_config_errors_name_the_field():
    from grpokit.algorithms.presets import get_preset

    grpo, dapo = get_preset("grpo"), get_preset("dapo")
    check_multiprocess_config(_config(prompts=6), dapo, 1)  # one process: anything goes
    check_multiprocess_config(_config(prompts=8, mini_batches=2), grpo, 2)
    with pytest.raises(ConfigError, match="rollout.prompts_per_step"):
        check_multiprocess_config(_config(prompts=6), grpo, 4)
    with pytest.raises(ConfigError, match="training.mini_batches"):
        check_multiprocess_config(_config(prompts=4, mini_batches=4), grpo, 2)
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        check_multiprocess_config(_config(), dapo, 2)
    with pytest.raises(ConfigError, match="sampling.strategy"):
        check_multiprocess_config(_config(strategy="adaptive"), grpo, 2)


def test_collectives_on_a_one_process_gloo_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert sum_over_ranks([3, 16]) == [3.0, 16.0]
        assert gather_objects({"a": 1}) == [{"a": 1}]
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- 1 process vs 2 processes
def _digit_reward_file(directory: Path) -> Path:
    path = directory / "digit_reward.py"
    path.write_text(
        "def digit_share(completions, **_):\n"
        "    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]\n"
    )
    return path


def _write_run_inputs(tmp_path: Path, make_policy) -> Path:
    """A tiny Qwen2 with a character tokenizer, addition prompts, a dense reward; returns the config path."""
    from grpokit.models import save_policy

    save_policy(make_policy(seed=0), tmp_path / "model")
    records = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(6) for b in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    config = {
        "model": {"name_or_path": str(tmp_path / "model")},
        "data": {"path": str(tmp_path / "train.jsonl"), "eval_path": str(tmp_path / "eval.jsonl")},
        "rewards": [{"function": f"{_digit_reward_file(tmp_path)}:digit_share"}],
        # β > 0: the reference model's log-probs enter the loss; batch-std advantages need global statistics.
        "algorithm": {"preset": "grpo", "overrides": {"beta": 0.04, "advantage": "batch"}},
        "rollout": {"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 4},
        # μ = 2 passes (old log-probs, two optimizer steps per GRPO step); 4-row micro-batches: two
        # backward passes per rank and optimizer step, so the no-sync accumulation path runs.
        "training": {
            "max_steps": 3,
            "num_iterations": 2,
            "micro_batch_size": 4,
            "learning_rate": 3e-3,
            "seed": 7,
        },
        "eval": {"num_prompts": 4, "samples_per_prompt": 2},
        "logging": {"run_dir": "unset", "progress": False, "tensorboard": False, "plot": False},
        "checkpoint": {"every_steps": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def final_weights(final_checkpoint_weights):
    """`final_weights(run_dir)`: the weights of the run's last step (3)."""
    def load(run_dir: Path) -> dict[str, torch.Tensor]:
        from grpokit.checkpoint import CheckpointManager

        assert CheckpointManager(run_dir).latest().name == "step-000003"
        return final_checkpoint_weights(run_dir)

    return load


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, grpokit_train, make_policy) -> Path:
    """The reference: the tiny run's config trained by one process (in <dir>/one)."""
    directory = tmp_path_factory.mktemp("distributed")
    grpokit_train(directory, _write_run_inputs(directory, make_policy), directory / "one", timeout=RUN_TIMEOUT_SECONDS)
    return directory


@pytest.fixture(scope="module")
def launch_two(grpokit_train):
    """`launch_two(directory, run, *"key=value")`: the directory's config trained by 2 gloo processes."""
    def launch(directory: Path, run: str, *settings: str) -> None:
        grpokit_train(directory, directory / "config.yaml", directory / run, *settings, processes=2,
                      timeout=RUN_TIMEOUT_SECONDS)

    return launch


# The config's run: 3 steps × μ = 2 AdamW steps at lr 3e-3; 16 rows in micro-batches of 4, so one process
# sums 4 micro-batch gradients per step (two processes: 2 each, then the all-reduce). LoRA: lr 3e-2.
SAME_WEIGHTS = {"learning_rate": 3e-3, "optimizer_steps": 6, "summed_parts": 4}


def _assert_same_weights_and_metrics(final_weights, assert_same_trained_weights, directory: Path, run: str,
                                     reference_run: str = "one") -> None:
    one, two = final_weights(directory / reference_run), final_weights(directory / run)
    initial = _final_weights_at_init(directory / "model")
    assert_same_trained_weights(one, two, initial, **SAME_WEIGHTS)

    logged = [json.loads(line) for line in (directory / run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (directory / reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in reference]  # rank 0 alone logged
    for mine, theirs in zip(logged, reference):
        for key in (
            "reward/mean",
            "reward/std",
            "rewards/digit_share/std",
            "frac_reward_zero_std",
            "completion/length_mean",
            "advantage/abs_mean",
            "train/loss",
            "train/kl",
            "train/grad_norm",
            "tokens_seen",
            "eval/greedy_accuracy",
        ):
            assert (key in mine) == (key in theirs), key
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


def test_two_gloo_processes_train_the_same_weights_as_one(single_process_run, launch_two, final_weights,
                                                          assert_same_trained_weights):
    launch_two(single_process_run, "two")
    _assert_same_weights_and_metrics(final_weights, assert_same_trained_weights, single_process_run, "two")


# The options that select tokens by a statistic of the batch; band and fractions wide enough to select
# tokens in a tiny batch. Self-normalised IS is gathered by the same code, but not run here: the in-process
# engine's μ is π_old up to float32 rounding of a different batch shape (5e-7), which makes the weights
# 1 ± rounding that differs between 1 and 2 processes, and AdamW turns such differences at gradient entries
# near its ε into 1e-5-size noise. test_micro_batch_invariance covers it with μ ≠ π_old.
BATCH_STATISTICS = (
    "algorithm.overrides.top_entropy_quantile=0.5",
    "algorithm.overrides.kl_cov={top_fraction: 0.1}",
    "algorithm.overrides.clip_cov={clip_ratio: 0.1, cov_low: 0.02, cov_high: 5.0}",
)


def test_batch_statistics_are_taken_over_every_process(single_process_run, grpokit_train, launch_two,
                                                      final_weights, assert_same_trained_weights):
    """Top-entropy τ and Clip-/KL-Cov's selections over the global mini-batch: 2 processes (DDP and FSDP)
    select the tokens 1 process does (each process taking its own would not: 1.7e-2 apart)."""
    grpokit_train(single_process_run, single_process_run / "config.yaml", single_process_run / "stats_one",
                  *BATCH_STATISTICS, timeout=RUN_TIMEOUT_SECONDS)
    for run, settings in (("stats_two", BATCH_STATISTICS), ("stats_fsdp", (*BATCH_STATISTICS, "training.fsdp=true"))):
        launch_two(single_process_run, run, *settings)
        _assert_same_weights_and_metrics(final_weights, assert_same_trained_weights, single_process_run, run,
                                         reference_run="stats_one")
        rows = [json.loads(line) for line in (single_process_run / run / "metrics.jsonl").read_text().splitlines()]
        for key in ("train/top_entropy_frac", "train/clip_cov_frac", "train/kl_cov_frac"):
            assert any(0 < row.get(key, 0) < 1 for row in rows), key


def test_two_fsdp_processes_train_the_same_weights_as_one_and_resume_from_sharded_state(
        single_process_run, launch_two, final_weights, assert_same_trained_weights):
    """FSDP2 shards parameters, gradients and Adam state; a run stopped at step 2 resumes to the same end."""
    launch_two(single_process_run, "fsdp", "training.fsdp=true")
    _assert_same_weights_and_metrics(final_weights, assert_same_trained_weights, single_process_run, "fsdp")

    launch_two(single_process_run, "fsdp_resumed", "training.fsdp=true", "training.max_steps=2")
    launch_two(single_process_run, "fsdp_resumed", "training.fsdp=true")  # resumes from step 2
    resumed, one = final_weights(single_process_run / "fsdp_resumed"), final_weights(single_process_run / "one")
    assert_same_trained_weights(one, resumed, None, **SAME_WEIGHTS)


def _final_weights_at_init(model_path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_path / "model.safetensors"))


def test_fsdp_shards_every_decoder_layer_and_gathers_back_the_full_weights(tmp_path):
    """On a one-process gloo group: parameters become DTensor shards, the forward through the root equals
    the plain model's, and `full_state_dict` / `load_full_state_dict` round-trip the weights."""
    import copy

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from grpokit.models import build_tiny_causal_lm
    from grpokit.models.logprobs import sequence_logprobs
    from grpokit.trainers.fsdp import decoder_layers, fsdp_shard, full_state_dict, load_full_state_dict

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = build_tiny_causal_lm(100, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64)
        plain = copy.deepcopy(model)
        assert len(decoder_layers(model)) == 2
        root = fsdp_shard(model)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        ids = torch.randint(4, 100, (2, 7))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            sharded, _ = root(ids, mask, 3, temperature=1.0, with_entropy=False, chunk_size=8)
            expected, _ = sequence_logprobs(plain, ids, mask, 3)
        torch.testing.assert_close(sharded, expected)
        gathered = full_state_dict(model)
        assert all(torch.equal(gathered[k], v) for k, v in plain.state_dict().items())
        load_full_state_dict(root, {k: v + 1 for k, v in plain.state_dict().items()})
        assert torch.equal(full_state_dict(model)["model.norm.weight"], plain.model.norm.weight + 1)
    finally:
        dist.destroy_process_group()


def test_fsdp_with_lora_trains_the_same_adapter_as_one_process(single_process_run, grpokit_train, launch_two,
                                                              final_checkpoint_weights, assert_same_trained_weights):
    """Frozen base and trainable adapters share FSDP groups; the reference is the adapter-disabled base,
    run through the sharded root (β > 0 in this config)."""
    lora = ("model.lora.r=4", "model.lora.alpha=8", "training.learning_rate=3e-2")
    grpokit_train(single_process_run, single_process_run / "config.yaml", single_process_run / "lora_one", *lora,
                  timeout=RUN_TIMEOUT_SECONDS)
    launch_two(single_process_run, "lora_fsdp", "training.fsdp=true", *lora)

    one, two = (final_checkpoint_weights(single_process_run / run, "adapter_model.safetensors")
                for run in ("lora_one", "lora_fsdp"))
    assert one.keys() == two.keys() and any("lora_B" in k for k in one)
    assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 1e-2  # B left zero: trained
    assert_same_trained_weights(one, two, None, **{**SAME_WEIGHTS, "learning_rate": 3e-2})


def test_two_processes_train_asynchronously_like_one_and_resume_from_every_ranks_queue(
        single_process_run, grpokit_train, launch_two, final_weights, assert_same_trained_weights):
    """training.async with 2 processes: each rank's producer (forked from it) samples that rank's share of
    every step with the scheduled older weights, so the run equals one process's asynchronous run. The
    step-2 checkpoint holds both ranks' queues (step 2, sampled by version 1): with the final checkpoint
    removed, the same command resumes from it and ends on the same weights, to the bit."""
    import shutil

    from grpokit.checkpoint import load_checkpoint

    settings = ("training.async={max_staleness: 1, producer: process}",)
    grpokit_train(single_process_run, single_process_run / "config.yaml", single_process_run / "async_one",
                  *settings, timeout=RUN_TIMEOUT_SECONDS)
    launch_two(single_process_run, "async_two", *settings)
    _assert_same_weights_and_metrics(final_weights, assert_same_trained_weights, single_process_run, "async_two",
                                     reference_run="async_one")
    logged = [json.loads(line) for line in (single_process_run / "async_two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/staleness_max"] for r in logged if "async/staleness_max" in r] == [0.0, 1.0, 1.0]

    middle = single_process_run / "async_two" / "checkpoints" / "step-000002"
    extra = load_checkpoint(middle, restore_rng=False)["extra_state"]
    queues = extra["async_queue_by_rank"]
    assert [[(q["step"], q["version"]) for q in queue] for queue in queues] == [[(2, 1)], [(2, 1)]]
    assert queues[0][0]["rollout"]["prompts"] != queues[1][0]["rollout"]["prompts"]  # each rank its own share

    resumed = single_process_run / "async_two_resumed"
    shutil.copytree(single_process_run / "async_two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000003")
    launch_two(single_process_run, "async_two_resumed", *settings)
    uninterrupted, again = final_weights(single_process_run / "async_two"), final_weights(resumed)
    assert all(torch.equal(uninterrupted[name], again[name]) for name in uninterrupted)
