"""diffusers adapter: Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel`` + ``FlowMatchEulerDiscreteScheduler``)
as a :class:`~grpokit.flow.policy.FlowModel`, LoRA via peft. For GPU users; tested on CPU with a tiny,
randomly initialised pipeline built from configs.

    model = SD3FlowModel.from_pretrained("stabilityai/stable-diffusion-3.5-medium", dtype="bfloat16",
                                         lora=LoraConfig(r=32, alpha=64))

What maps to what: SD3's ``sigma`` is our t (1 = noise); its transformer predicts ``ε − x_0`` (the scheduler
steps ``x + (σ' − σ)·v``), which is our velocity; the time grid is the scheduler's own sigmas (shifted,
ending at 0), so training samples what the pipeline would. ``timestep = 1000·σ`` goes into the transformer.

:class:`DiffusersFlowModel` holds what every diffusers transformer shares (the frozen reference, LoRA,
saving); FLUX.1 is :class:`grpokit.flow.flux_adapter.FluxFlowModel`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Flow-GRPO's LoRA targets on the SD3 transformer (attention projections of both streams).
SD3_LORA_TARGETS = (
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

PromptEncoder = Callable[[list[str]], tuple[Tensor, Tensor]]  # prompts -> (embeds [B, L, D], pooled [B, P])


@dataclass
class SD3Conditions:
    """Prompt embeddings of a batch, with the negative prompt's for classifier-free guidance."""

    prompt_embeds: Tensor
    pooled: Tensor
    negative_embeds: Tensor
    negative_pooled: Tensor

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def __getitem__(self, rows: Tensor) -> SD3Conditions:
        return SD3Conditions(
            self.prompt_embeds[rows],
            self.pooled[rows],
            self.negative_embeds[rows],
            self.negative_pooled[rows],
        )


class DiffusersFlowModel:
    """What the SD3 and FLUX adapters share: a transformer (LoRA-wrapped or fully trained), a frozen VAE, the
    scheduler, the reference velocity, saving and loading. A subclass sets ``latent_shape`` and defines
    ``encode``, ``time_grid``, ``decode`` and ``_predict(transformer, x, t, conditions, guidance_scale)``."""

    latent_shape: tuple[int, ...]

    def __init__(self, transformer, vae, scheduler, *, lora: Any = None):
        self.vae = vae.requires_grad_(False)
        self.scheduler = scheduler
        self._frozen_reference = None
        self.is_lora = lora is not None
        self.transformer = _with_lora(transformer, lora) if self.is_lora else transformer
        self.dtype = next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def _predict(self, transformer, x: Tensor, t: float, conditions: Any, guidance_scale: float) -> Tensor:
        raise NotImplementedError

    def velocity(self, x: Tensor, t: float, conditions: Any, *, guidance_scale: float = 1.0) -> Tensor:
        return self._predict(self.transformer, x, t, conditions, guidance_scale)

    @torch.no_grad()
    def reference_velocity(self, x: Tensor, t: float, conditions: Any, *, guidance_scale: float = 1.0) -> Tensor:
        if self.is_lora:  # the base model with the adapter switched off is the reference (no copy in memory)
            with self.transformer.disable_adapter():
                return self._predict(self.transformer, x, t, conditions, guidance_scale)
        if self._frozen_reference is None:
            self._frozen_reference = copy.deepcopy(self.transformer).requires_grad_(False)
        return self._predict(self._frozen_reference, x, t, conditions, guidance_scale)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def save(self, directory: Path) -> None:
        """LoRA: the adapter only (peft format); full fine-tuning: the transformer (diffusers format)."""
        self.transformer.save_pretrained(str(directory))

    def load(self, directory: Path) -> None:
        if self.is_lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(
                self.transformer, load_file(str(Path(directory) / "adapter_model.safetensors"))
            )
        else:
            loaded = type(self.transformer).from_pretrained(str(directory))
            self.transformer.load_state_dict(loaded.state_dict())


class SD3FlowModel(DiffusersFlowModel):
    """SD3 transformer + VAE + a prompt encoder. ``encode_prompts(prompts)`` returns ``(embeds, pooled)``;
    :meth:`from_pipeline` wires it to ``StableDiffusion3Pipeline.encode_prompt``."""

    def __init__(
        self,
        transformer,
        vae,
        scheduler,
        encode_prompts: PromptEncoder,
        *,
        image_size: int,
        negative_prompt: str = "",
        lora: Any = None,
    ):
        super().__init__(transformer, vae, scheduler, lora=lora)
        self.encode_prompts = encode_prompts
        self.negative_prompt = negative_prompt
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (transformer.config.in_channels, image_size // scale, image_size // scale)

    @classmethod
    def from_pipeline(
        cls, pipe, *, lora: Any = None, image_size: int | None = None, max_sequence_length: int = 256
    ):
        """Wrap a loaded ``StableDiffusion3Pipeline`` (its text encoders stay frozen)."""
        for encoder in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            if encoder is not None:
                encoder.requires_grad_(False).eval()  # frozen: no dropout (T5's is on when built)

        @torch.no_grad()
        def encode_prompts(prompts: list[str]) -> tuple[Tensor, Tensor]:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts,
                prompts,
                prompts,
                do_classifier_free_guidance=False,
                max_sequence_length=max_sequence_length,
            )
            return embeds, pooled

        size = image_size or pipe.default_sample_size * pipe.vae_scale_factor
        return cls(pipe.transformer, pipe.vae, pipe.scheduler, encode_prompts, image_size=size, lora=lora)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "bfloat16", lora: Any = None, **kwargs):
        """Load a ``StableDiffusion3Pipeline`` from a local directory or hub id (SD3 / SD3.5)."""
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(name_or_path, torch_dtype=_DTYPES[dtype])
        if torch.cuda.is_available():
            pipe = pipe.to("cuda")
        return cls.from_pipeline(pipe, lora=lora, **kwargs)

    # ------------------------------------------------------------------ FlowModel protocol
    def encode(self, records: list[dict[str, Any]]) -> SD3Conditions:
        prompts = [str(r["prompt"]) for r in records]
        embeds, pooled = self.encode_prompts(prompts)
        negative_embeds, negative_pooled = self.encode_prompts([self.negative_prompt])
        batch = len(prompts)
        return SD3Conditions(
            embeds, pooled, negative_embeds.expand(batch, -1, -1), negative_pooled.expand(batch, -1)
        )

    def time_grid(self, num_steps: int) -> Tensor:
        """The scheduler's sigmas for ``num_steps`` (shifted, with the trailing 0), ``[S + 1]`` float64."""
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.detach().to("cpu", torch.float64)

    def _predict(self, transformer, x: Tensor, t: float, c: SD3Conditions, guidance_scale: float) -> Tensor:
        if guidance_scale != 1.0:
            hidden = torch.cat([x, x])
            embeds = torch.cat([c.negative_embeds, c.prompt_embeds])
            pooled = torch.cat([c.negative_pooled, c.pooled])
        else:
            hidden, embeds, pooled = x, c.prompt_embeds, c.pooled
        timestep = torch.full((hidden.shape[0],), 1000.0 * t, device=self.device, dtype=self.dtype)
        out = transformer(
            hidden_states=hidden.to(self.device, self.dtype),
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype),
            timestep=timestep,
            return_dict=False,
        )[0].to(x.dtype)
        if guidance_scale == 1.0:
            return out
        unconditional, conditional = out.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents → images ``[B, 3, H, W]`` in [−1, 1] through the VAE (SD3's scaling and shift undone)."""
        config = self.vae.config
        latents = latents / config.scaling_factor + (config.shift_factor or 0.0)
        images = self.vae.decode(latents.to(self.device, self.vae.dtype), return_dict=False)[0]
        return images.float().clamp(-1.0, 1.0).cpu()


def _with_lora(transformer, lora: Any):
    """A peft-wrapped transformer whose only trainable weights are the LoRA factors. ``lora`` has ``r``,
    ``alpha``, ``dropout``, ``target_modules`` (grpokit's LoraConfig); "all-linear" means Flow-GRPO's
    attention projections."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if targets in (None, "all-linear"):
        targets = list(SD3_LORA_TARGETS)
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )
    return get_peft_model(transformer, config)
