"""diffusers adapter: FLUX.1 (``FluxTransformer2DModel`` + ``FlowMatchEulerDiscreteScheduler``) as a
:class:`~grpokit.flow.policy.FlowModel`, LoRA via peft. For GPU users; tested on CPU with a tiny, randomly
initialised pipeline (CLIP + T5 text encoders, transformer, VAE) built from configs.

    model = FluxFlowModel.from_pretrained("black-forest-labs/FLUX.1-dev", dtype="bfloat16",
                                          lora=LoraConfig(r=32, alpha=64), guidance=3.5)

Three things differ from SD3 (:mod:`grpokit.flow.diffusers_adapter`):

- **Packed latents.** FLUX's transformer reads the VAE latents ``[C, h, w]`` as a sequence of 2×2 patches,
  ``[(h/2)·(w/2), 4C]``, each with an image id ``(0, row, column)`` for its rotary position embedding.
  The policy's state *is* the packed tensor (the SDE works on any shape, and packing is a permutation,
  so log-probs are unchanged); :func:`unpack_latents` runs only to decode.
- **Guidance as an input.** FLUX.1-dev is guidance-distilled: the guidance strength (3.5 in its pipeline)
  is an embedding the transformer takes, one pass per step; ``guidance`` here. FLUX.1-schnell has no
  guidance embedding. A policy ``guidance_scale ≠ 1`` is true classifier-free guidance with the
  negative prompt on top (the pipeline's ``true_cfg_scale``), two passes per step.
- **Its own shift.** FLUX shifts the time grid by ``t ← e^μ / (e^μ + 1/t − 1)`` with μ depending on the
  image's token count (:func:`flux_shift_mu`: 0.5 at 256 tokens, 1.15 at 4096, linear between), so a
  larger image spends more steps at high noise. The grid starts from ``linspace(1, 1/S, S)`` as the
  pipeline's does, and the scheduler computes it, so training samples what the pipeline would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .diffusers_adapter import _DTYPES, DiffusersFlowModel

FluxPromptEncoder = Any  # prompts -> (embeds [B, L, D], pooled [B, P], text_ids [L, 3])


def pack_latents(latents: Tensor) -> Tensor:
    """``[B, C, h, w] → [B, (h/2)·(w/2), 4C]``: 2×2 patches in row-major order, each patch's values
    channel-major (FLUX's ``_pack_latents``). Case C = 1, h = w = 2: ``[[a, b], [c, d]] → [[a, b, c, d]]``."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2, got {h}x{w}")
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`pack_latents` for latents of ``height × width``: ``[B, L, 4C] → [B, C, h, w]``."""
    b, _, channels = packed.shape
    patches = packed.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def latent_image_ids(height: int, width: int) -> Tensor:
    """``[(h/2)·(w/2), 3]`` position ids of the packed patches: ``(0, row, column)`` for the rotary
    embedding. Case 4×4 latents: [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]."""
    rows, columns = height // 2, width // 2
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3)


def flux_shift_mu(
    image_seq_len: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent shift μ: linear in the packed token count, ``base_shift`` at
    ``base_seq_len`` and ``max_shift`` at ``max_seq_len`` (FLUX.1's scheduler config). Case: 1024² px (128²
    latents → 4096 tokens) → 1.15; 512² px (1024 tokens) → 0.5 + 0.65·768/3840 = 0.63."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def flux_time_shift(t: Tensor, mu: float) -> Tensor:
    """``t ← e^μ / (e^μ + 1/t − 1)`` (the scheduler's exponential time shift with exponent 1); maps 1 to 1
    and 0 to 0. Case μ = ln 3 is SD3's shift 3: t = 0.5 → 0.75."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


@dataclass
class FluxConditions:
    """Prompt embeddings of a batch (T5 sequence, CLIP pooled), the negative prompt's for true CFG, and the
    text position ids (all zeros in FLUX.1; shared by every row)."""

    prompt_embeds: Tensor
    pooled: Tensor
    negative_embeds: Tensor
    negative_pooled: Tensor
    text_ids: Tensor  # [L, 3]
    negative_text_ids: Tensor  # [L', 3]

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def __getitem__(self, rows: Tensor) -> FluxConditions:
        return FluxConditions(
            self.prompt_embeds[rows],
            self.pooled[rows],
            self.negative_embeds[rows],
            self.negative_pooled[rows],
            self.text_ids,
            self.negative_text_ids,
        )


class FluxFlowModel(DiffusersFlowModel):
    """FLUX.1 transformer + VAE + a prompt encoder. ``encode_prompts(prompts)`` returns ``(embeds, pooled,
    text_ids)``; :meth:`from_pipeline` wires it to ``FluxPipeline.encode_prompt``. ``guidance``: the
    embedded guidance of a guidance-distilled model (FLUX.1-dev: 3.5); ignored by a model without one."""

    def __init__(
        self,
        transformer,
        vae,
        scheduler,
        encode_prompts: FluxPromptEncoder,
        *,
        image_size: int,
        guidance: float = 3.5,
        negative_prompt: str = "",
        lora: Any = None,
    ):
        super().__init__(transformer, vae, scheduler, lora=lora)
        self.encode_prompts = encode_prompts
        self.negative_prompt = negative_prompt
        self.guidance = guidance
        self.guidance_embeds = bool(transformer.config.guidance_embeds)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        # FLUX needs latents divisible by 2 for the 2x2 packing (the pipeline rounds down the same way)
        self.latent_height = self.latent_width = 2 * (image_size // (scale * 2))
        channels = transformer.config.in_channels  # = 4 × the VAE's latent channels
        self.latent_shape = ((self.latent_height // 2) * (self.latent_width // 2), channels)
        self.image_ids = latent_image_ids(self.latent_height, self.latent_width)

    @classmethod
    def from_pipeline(
        cls,
        pipe,
        *,
        lora: Any = None,
        image_size: int | None = None,
        guidance: float = 3.5,
        max_sequence_length: int = 512,
    ):
        """Wrap a loaded ``FluxPipeline`` (its text encoders stay frozen)."""
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            if encoder is not None:
                encoder.requires_grad_(False).eval()  # frozen: no dropout (T5's is on when built)

        @torch.no_grad()
        def encode_prompts(prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
            return pipe.encode_prompt(prompts, prompts, max_sequence_length=max_sequence_length)

        size = image_size or pipe.default_sample_size * pipe.vae_scale_factor
        return cls(
            pipe.transformer, pipe.vae, pipe.scheduler, encode_prompts, image_size=size, guidance=guidance, lora=lora
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "bfloat16", lora: Any = None, **kwargs):
        """Load a ``FluxPipeline`` from a local directory or hub id (FLUX.1-dev / -schnell)."""
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(name_or_path, torch_dtype=_DTYPES[dtype])
        if torch.cuda.is_available():
            pipe = pipe.to("cuda")
        return cls.from_pipeline(pipe, lora=lora, **kwargs)

    # ------------------------------------------------------------------ FlowModel protocol
    def encode(self, records: list[dict[str, Any]]) -> FluxConditions:
        prompts = [str(r["prompt"]) for r in records]
        embeds, pooled, text_ids = self.encode_prompts(prompts)
        negative_embeds, negative_pooled, negative_text_ids = self.encode_prompts([self.negative_prompt])
        batch = len(prompts)
        return FluxConditions(
            embeds,
            pooled,
            negative_embeds.expand(batch, -1, -1),
            negative_pooled.expand(batch, -1),
            text_ids,
            negative_text_ids,
        )

    def shift_mu(self) -> float:
        """μ of this model's image size, from the scheduler's config (FLUX.1's defaults when absent)."""
        config = self.scheduler.config
        return flux_shift_mu(
            self.latent_shape[0],
            base_seq_len=config.get("base_image_seq_len", 256),
            max_seq_len=config.get("max_image_seq_len", 4096),
            base_shift=config.get("base_shift", 0.5),
            max_shift=config.get("max_shift", 1.15),
        )

    def time_grid(self, num_steps: int) -> Tensor:
        """The pipeline's grid: ``linspace(1, 1/S, S)`` shifted by the scheduler (with μ of this image size
        when it shifts dynamically, as FLUX.1's does), then the trailing 0; ``[S + 1]`` float64."""
        sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).tolist()
        self.scheduler.set_timesteps(sigmas=sigmas, mu=self.shift_mu())
        return self.scheduler.sigmas.detach().to("cpu", torch.float64)

    def _predict(self, transformer, x: Tensor, t: float, c: FluxConditions, guidance_scale: float) -> Tensor:
        out = self._forward(transformer, x, t, c.prompt_embeds, c.pooled, c.text_ids)
        if guidance_scale == 1.0:
            return out
        unconditional = self._forward(transformer, x, t, c.negative_embeds, c.negative_pooled, c.negative_text_ids)
        return unconditional + guidance_scale * (out - unconditional)

    def _forward(
        self, transformer, x: Tensor, t: float, embeds: Tensor, pooled: Tensor, text_ids: Tensor
    ) -> Tensor:
        batch = x.shape[0]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=self.device, dtype=torch.float32)
        # the transformer scales timestep (and guidance) by 1000 itself: it takes t in [0, 1]
        timestep = torch.full((batch,), t, device=self.device, dtype=self.dtype)
        return transformer(
            hidden_states=x.to(self.device, self.dtype),
            encoder_hidden_states=embeds.to(self.device, self.dtype),
            pooled_projections=pooled.to(self.device, self.dtype),
            timestep=timestep,
            img_ids=self.image_ids.to(self.device, self.dtype),
            txt_ids=text_ids.to(self.device, self.dtype),
            guidance=guidance,
            return_dict=False,
        )[0].to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Packed latents → images ``[B, 3, H, W]`` in [−1, 1]: unpacked, FLUX's scaling and shift undone, VAE."""
        config = self.vae.config
        latents = unpack_latents(latents, self.latent_height, self.latent_width)
        latents = latents / config.scaling_factor + (config.shift_factor or 0.0)
        images = self.vae.decode(latents.to(self.device, self.vae.dtype), return_dict=False)[0]
        return images.float().clamp(-1.0, 1.0).cpu()
