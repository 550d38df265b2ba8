"""The diffusers SD3 adapter on a tiny, randomly initialised pipeline built from configs (no download)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from grpokit.data import PromptDataset  # noqa: E402
from grpokit.flow.config import load_flow_config  # noqa: E402
from grpokit.flow.diffusers_adapter import SD3FlowModel  # noqa: E402
from grpokit.flow.policy import FlowPolicy  # noqa: E402
from grpokit.flow.presets import get_flow_preset  # noqa: E402
from grpokit.flow.trainer import FlowTrainer  # noqa: E402
from grpokit.rewards import Reward, RewardRunner  # noqa: E402
from grpokit.trainers.lm_config import LoraConfig  # noqa: E402


def _byte_characters() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (their byte-level BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]


def _tiny_sd3_pipeline():
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    characters = _byte_characters()
    vocab = {c: i for i, c in enumerate(characters + [c + "</w>" for c in characters])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)  # character-level, no merges

    def text_encoder():
        config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            projection_dim=8,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return CLIPTextModelWithProjection(config)

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=8,
        shift_factor=0.0609,
        scaling_factor=1.5305,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder(),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


@pytest.fixture(scope="module")
def tiny_sd3() -> SD3FlowModel:
    return SD3FlowModel.from_pipeline(
        _tiny_sd3_pipeline(), lora=LoraConfig(r=4, alpha=8), image_size=16, max_sequence_length=8
    )


def test_tiny_sd3_transitions_are_recomputed_by_the_training_pass(tiny_sd3):
    policy = FlowPolicy(tiny_sd3, guidance_scale=4.5)
    conditions = tiny_sd3.encode([{"prompt": "a red cube"}, {"prompt": "two cats"}])
    rollout = policy.rollout(
        conditions, torch.tensor([0, 1]), [0, 1], num_steps=3, generator=torch.Generator().manual_seed(0)
    )
    assert rollout.latents.shape == (2, 4, 4, 8, 8)
    assert rollout.timesteps[0].item() == 1.0 and rollout.timesteps[-1].item() == 0.0  # the scheduler's grid
    logp, mask = policy.log_probs(rollout)
    assert torch.isfinite(rollout.old_logprobs).all()
    assert (logp.detach() - rollout.old_logprobs).abs().max().item() <= 1e-5
    assert tiny_sd3.decode(rollout.samples).shape == (2, 3, 16, 16)


def test_tiny_sd3_rollout_and_update_step_trains_only_lora(tiny_sd3, tmp_path):
    config = load_flow_config(
        {
            "trainer": "flow",
            "model": {"type": "sd3", "name_or_path": "<in memory>", "guidance_scale": 2.0},
            "data": {"path": "<in memory>"},
            "rewards": [{"function": "unused:placeholder"}],
            "algorithm": {"preset": "flow_grpo_guard", "overrides": {"beta": 0.04}},
            "rollout": {"prompts_per_step": 1, "num_generations": 2, "num_steps": 2, "eval_num_steps": 2},
            "training": {"max_steps": 1, "learning_rate": 1e-2, "mini_batches": 2},
            "eval": {"samples_per_prompt": 1},
            "logging": {"run_dir": str(tmp_path), "tensorboard": False, "progress": False, "plot": False},
            "checkpoint": {"resume": False},
        }
    )
    brightness = Reward("brightness", lambda completions, **kw: [float(c.mean()) for c in completions])
    preset = get_flow_preset("flow_grpo_guard", beta=0.04)
    trainer = FlowTrainer(
        config,
        policy=FlowPolicy(tiny_sd3, guidance_scale=2.0),
        preset=preset,
        train_data=PromptDataset.from_records([{"prompt": "a red cube"}]),
        reward_runner=RewardRunner([brightness]),
    )
    lora_before = [p.detach().clone() for p in trainer.parameters]
    base = [p for n, p in tiny_sd3.transformer.named_parameters() if "lora" not in n]
    base_before = [p.detach().clone() for p in base]
    metrics = trainer.train_step(1)
    assert metrics["train/onpolicy_logprob_error"] <= 1e-5
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("flow/step"))
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, trainer.parameters))
    assert all(torch.equal(a, b) for a, b in zip(base_before, base))
    assert all("lora" in n for n, p in tiny_sd3.transformer.named_parameters() if p.requires_grad)
    x = torch.randn(1, 4, 8, 8)
    conditions = tiny_sd3.encode([{"prompt": "a red cube"}])
    assert not torch.allclose(
        tiny_sd3.velocity(x, 0.5, conditions), tiny_sd3.reference_velocity(x, 0.5, conditions)
    )
    tiny_sd3.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    saved = [p.detach().clone() for p in trainer.parameters]
    with torch.no_grad():
        for p in trainer.parameters:
            p.add_(1.0)
    tiny_sd3.load(tmp_path / "adapter")
    assert all(torch.equal(a, b) for a, b in zip(saved, trainer.parameters))
