"""The FLUX.1 adapter on a tiny, randomly initialised pipeline built from configs (no download): CLIP + T5
text encoders, a FLUX transformer with a guidance embedding (FLUX.1-dev's form), a VAE."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from grpokit.config_schema import ConfigError  # noqa: E402
from grpokit.data import PromptDataset  # noqa: E402
from grpokit.flow.config import load_flow_config  # noqa: E402
from grpokit.flow.flux_adapter import (  # noqa: E402
    FluxFlowModel,
    flux_shift_mu,
    flux_time_shift,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from grpokit.flow.policy import FlowPolicy  # noqa: E402
from grpokit.flow.presets import get_flow_preset  # noqa: E402
from grpokit.flow.trainer import FlowTrainer  # noqa: E402
from grpokit.flow.window import window_mask  # noqa: E402
from grpokit.rewards import Reward, RewardRunner  # noqa: E402
from grpokit.trainers.lm_config import LoraConfig  # noqa: E402

from .test_diffusers_adapter import _byte_characters  # noqa: E402


def _t5_tokenizer():
    """A character-level T5 tokenizer (Unigram over printable ASCII) built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=tokenizer, extra_ids=0, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _tiny_flux_pipeline(guidance_embeds: bool = True):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    characters = _byte_characters()
    vocab = {c: i for i, c in enumerate(characters + [c + "</w>" for c in characters])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    clip_tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)  # character-level, no merges
    t5_tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 VAE latent channels × a 2×2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=16,  # CLIP's hidden size
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=8,
        shift_factor=0.1159,
        scaling_factor=0.3611,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    # FLUX.1-dev's scheduler config: dynamic (resolution-dependent) shifting
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


@pytest.fixture(scope="module")
def tiny_flux() -> FluxFlowModel:
    return FluxFlowModel.from_pipeline(
        _tiny_flux_pipeline(), lora=LoraConfig(r=4, alpha=8), image_size=16, max_sequence_length=8
    )


def test_packing_is_flux_pipelines_and_inverts():
    from diffusers import FluxPipeline

    assert pack_latents(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).tolist() == [[[1.0, 2.0, 3.0, 4.0]]]
    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    assert latent_image_ids(4, 4).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert torch.equal(latent_image_ids(6, 8), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(1, 4, 3, 4))


def test_flux_shift_is_resolution_dependent():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert flux_shift_mu(256) == pytest.approx(0.5) and flux_shift_mu(4096) == pytest.approx(1.15)
    assert flux_shift_mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)  # 512² px
    assert flux_shift_mu(1024) == pytest.approx(calculate_shift(1024))
    assert flux_time_shift(torch.tensor(0.5), math.log(3.0)).item() == pytest.approx(0.75)  # = SD3's shift 3


def test_tiny_flux_uses_its_own_shifted_grid_and_packed_latents(tiny_flux):
    assert tiny_flux.latent_shape == (16, 16)  # 16 px / VAE 2× = 8×8 latents → 4·4 patches of 4 × 2·2 values
    mu = tiny_flux.shift_mu()
    assert mu == pytest.approx(flux_shift_mu(16))
    grid = tiny_flux.time_grid(4)
    # the pipeline's linspace(1, 1/S, S), shifted with this image's μ, then 0
    expected = [flux_time_shift(torch.tensor(s, dtype=torch.float64), mu).item() for s in (1.0, 0.75, 0.5, 0.25)]
    assert grid.tolist() == pytest.approx(expected + [0.0], abs=1e-6)  # the scheduler computes in float32


def test_tiny_flux_transitions_are_recomputed_by_the_training_pass(tiny_flux):
    policy = FlowPolicy(tiny_flux)
    conditions = tiny_flux.encode([{"prompt": "a red cube"}, {"prompt": "two cats"}])
    rollout = policy.rollout(
        conditions, torch.tensor([0, 1]), [0, 1], num_steps=3, generator=torch.Generator().manual_seed(0)
    )
    assert rollout.latents.shape == (2, 4, 16, 16)
    assert rollout.timesteps[0].item() == 1.0 and rollout.timesteps[-1].item() == 0.0
    logp, mask = policy.log_probs(rollout)
    assert torch.isfinite(rollout.old_logprobs).all()
    # float32 model and sampling pass vs the same float32 training pass: only reduction order differs
    assert (logp.detach() - rollout.old_logprobs).abs().max().item() <= 1e-5
    assert tiny_flux.decode(rollout.samples).shape == (2, 3, 16, 16)


def test_guidance_is_an_input_and_true_cfg_combines_two_passes(tiny_flux):
    x = torch.randn(1, 16, 16)
    conditions = tiny_flux.encode([{"prompt": "a red cube"}])
    default = tiny_flux.velocity(x, 0.5, conditions)
    tiny_flux.guidance = 7.0
    try:
        stronger = tiny_flux.velocity(x, 0.5, conditions)
    finally:
        tiny_flux.guidance = 3.5
    assert not torch.allclose(default, stronger)  # the embedded guidance reaches the transformer
    negative = tiny_flux.encode([{"prompt": ""}])
    unconditional = tiny_flux.velocity(x, 0.5, negative)
    guided = tiny_flux.velocity(x, 0.5, conditions, guidance_scale=2.0)
    assert torch.allclose(guided, unconditional + 2.0 * (default - unconditional), atol=1e-5)


def test_a_flux_without_guidance_embedding_takes_no_guidance():
    model = FluxFlowModel.from_pipeline(_tiny_flux_pipeline(guidance_embeds=False), image_size=16, max_sequence_length=8)
    conditions = model.encode([{"prompt": "a red cube"}])
    x = torch.randn(1, 16, 16)
    assert not model.guidance_embeds
    assert torch.isfinite(model.velocity(x, 0.5, conditions)).all()


def test_tiny_flux_rollout_and_update_step_trains_only_lora(tiny_flux, tmp_path):
    config = load_flow_config(
        {
            "trainer": "flow",
            "model": {"type": "sd3", "name_or_path": "<in memory>"},
            "data": {"path": "<in memory>"},
            "rewards": [{"function": "unused:placeholder"}],
            "algorithm": {"preset": "flow_grpo_guard", "overrides": {"beta": 0.04}},
            "rollout": {"prompts_per_step": 1, "num_generations": 2, "num_steps": 3, "eval_num_steps": 2},
            "training": {"max_steps": 1, "learning_rate": 1e-2, "mini_batches": 2},
            "eval": {"samples_per_prompt": 1},
            "logging": {"run_dir": str(tmp_path), "tensorboard": False, "progress": False, "plot": False},
            "checkpoint": {"resume": False},
        }
    )
    brightness = Reward("brightness", lambda completions, **kw: [float(c.mean()) for c in completions])
    trainer = FlowTrainer(
        config,
        policy=FlowPolicy(tiny_flux),
        preset=get_flow_preset("flow_grpo_guard", beta=0.04),
        train_data=PromptDataset.from_records([{"prompt": "a red cube"}]),
        reward_runner=RewardRunner([brightness]),
    )
    lora_before = [p.detach().clone() for p in trainer.parameters]
    base = [p for n, p in tiny_flux.transformer.named_parameters() if "lora" not in n]
    base_before = [p.detach().clone() for p in base]
    metrics = trainer.train_step(0)
    assert metrics["train/onpolicy_logprob_error"] <= 1e-5
    assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("flow/step"))
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, trainer.parameters))
    assert all(torch.equal(a, b) for a, b in zip(base_before, base))
    assert all("lora" in n for n, p in tiny_flux.transformer.named_parameters() if p.requires_grad)
    x = torch.randn(1, 16, 16)
    conditions = tiny_flux.encode([{"prompt": "a red cube"}])
    assert not torch.allclose(tiny_flux.velocity(x, 0.5, conditions), tiny_flux.reference_velocity(x, 0.5, conditions))
    tiny_flux.save(tmp_path / "adapter")
    saved = [p.detach().clone() for p in trainer.parameters]
    with torch.no_grad():
        for p in trainer.parameters:
            p.add_(1.0)
    tiny_flux.load(tmp_path / "adapter")
    assert all(torch.equal(a, b) for a, b in zip(saved, trainer.parameters))


def test_tiny_flux_with_an_sde_window(tiny_flux):
    policy = FlowPolicy(tiny_flux)
    conditions = tiny_flux.encode([{"prompt": "a red cube"}] * 2)
    rollout = policy.rollout(
        conditions, torch.tensor([0, 0]), [0], num_steps=4, generator=torch.Generator().manual_seed(0),
        sde_steps=window_mask(4, (1, 3)),
    )
    logp, mask = policy.log_probs(rollout)
    assert mask.tolist() == [[0, 1, 1, 0]] * 2
    assert (logp.detach() - rollout.old_logprobs).abs().max().item() <= 1e-5


def test_a_flux_config_loads_a_saved_pipeline_from_a_directory(tmp_path):
    from grpokit.flow.build import build_flow_model

    _tiny_flux_pipeline().save_pretrained(tmp_path / "flux")
    config = load_flow_config(
        {
            "trainer": "flow",
            "model": {"type": "flux", "name_or_path": str(tmp_path / "flux"), "flux_guidance": 5.0,
                      "lora": {"r": 2, "alpha": 4}},
            "data": {"path": "prompts.jsonl"},
            "rewards": [{"function": "unused:placeholder"}],
        }
    )
    model = build_flow_model(config)
    assert isinstance(model, FluxFlowModel) and model.guidance == 5.0 and model.is_lora
    assert model.latent_shape[1] == 16 and model.time_grid(2)[-1].item() == 0.0
    with pytest.raises(ConfigError, match="name_or_path: required for model.type=flux"):
        load_flow_config({"trainer": "flow", "model": {"type": "flux"}, "data": {"path": "p.jsonl"},
                          "rewards": [{"function": "unused:placeholder"}]})
