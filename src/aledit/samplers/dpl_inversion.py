"""Dynamic Prompt Learning (Wang et al., NeurIPS 2023): DDIM inversion, then per denoising step
the nouns' tokens learned on the cross-attention maps, interleaved with null-text inversion.

Algorithm 1 of the paper, on the shared parts (:mod:`aledit.samplers.ddim`):

1. DDIM inversion of the source latent with the source prompt at guidance 1, recording the mean
   self-attention at ``latent / 2`` (DPL: 32x32) and the nouns' cross-attention at ``latent / 4``
   (16x16); the background map ``B`` is the union of the self-attention clusters no noun owns
   (:func:`aledit.masks.attention.masks_from_attention`, section 3.3: 5 clusters, TH 0.2).
2. From ``x = z_T``, for each denoising step ``i`` (``t = timesteps[i]``), with the tokens
   ``V`` carried over from the previous step:

   * up to ``max_iterations`` times: ``C = text_encoder(prompt with V)``, one conditional UNet
     pass on ``x`` with the cross-attention of level ``latent / 4`` captured with its graph
     (:class:`~aledit.attention.graph_recording.GraphRecordingAttnProcessor`), the losses of
     :func:`aledit.dpl.dpl_losses`; stop once each is below ``beta exp(-i / alpha)``, else one
     AdamW step on ``V`` (gradients reach only ``V``: ``torch.autograd.grad``);
   * ``C_i = text_encoder(prompt with V)`` (the prompt's own embedding while ``V`` is unchanged);
   * null-text inversion's step ``i`` with ``C_i`` (:meth:`NullTextInversion.step`), which also
     moves ``x`` along the guided trajectory; without null-text inversion ``x`` is the DDIM
     inversion's latent of the next step.

The result is the :class:`~aledit.samplers.ddim.Inversion` with ``null_embeddings`` and
``source_embeddings`` (``C_i`` of every step), which the edit feeds to the source's
conditional row (P2P then runs unchanged).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..attention.graph_recording import AttentionCapture, GraphRecordingAttnProcessor
from ..attention.install import is_cross_attention, is_self_attention
from ..attention.recorder import AttentionRecorder, SelfAttentionRecorder
from ..attention.recording import RecordingAttnProcessor
from ..attention.state import BatchLayout, EditState
from ..dpl import REDUCTIONS, decaying_threshold, dpl_losses
from ..masks.attention import masks_from_attention
from ..masks.ops import resize_nearest
from ..prompts import span_positions
from ..validation import check_choice, check_flag, check_number
from .ddim import DDIMInversion, DDIMInversionConfig, Inversion, NullTextConfig, NullTextInversion
from .ddim_edit import DDIMEditConfig, DDIMEditSampler
from .inversion_cache import tensor_digest

__all__ = [
    "DPLEditSampler",
    "DPLInversion",
    "DPLSettings",
    "DynamicPrompt",
    "attention_levels",
    "pick_level",
]


@dataclass(frozen=True)
class DPLSettings:
    """How DPL learns its tokens (defaults: the paper and the authors' ``DPL.sh``).

    Attributes:
        max_iterations: AdamW iterations per denoising step, at most (code: 21); 0 = no learning.
        lr: AdamW's learning rate (code: torch's default 1e-3).
        weight_decay: AdamW's weight decay (code: torch's default 0.01).
        weights: ``(w_at, w_dj, w_bg)`` of Eq. 9 (1, 0.05, 0.05).
        at_threshold, dj_threshold, bg_threshold: ``(alpha, beta)`` of each loss's threshold
            ``beta exp(-i / alpha)`` (code: L_at (25, 0.3), L_dj (25, 0.9), L_bg (50, 0.7)).
        reduction: ``"mean"`` (code) or ``"sum"`` (paper Eqs. 6, 7) for L_dj and L_bg.
        smoothing_sigma: sigma of L_at's 3x3 Gaussian filter (0.5; the code's kernel equals 0.707).
        attention_level: UNet level of the maps, ``latent / 2**level`` (2: 16x16 at 512); the
            nearest level with cross-attention is used.
        self_attention_level: level of the self-attention clustered for the background (1: 32x32).
        n_clusters, cluster_threshold: V and TH of section 3.3 (5, 0.2).
        seed: seed of the k-means.
        gradient_checkpointing: recompute the UNet's activations in the backward pass of the
            token learning (less memory for SD at 512 on a GPU, ~30% more time).
    """

    max_iterations: int = 21
    lr: float = 1e-3
    weight_decay: float = 0.01
    weights: tuple[float, float, float] = (1.0, 0.05, 0.05)
    at_threshold: tuple[float, float] = (25.0, 0.3)
    dj_threshold: tuple[float, float] = (25.0, 0.9)
    bg_threshold: tuple[float, float] = (50.0, 0.7)
    reduction: str = "mean"
    smoothing_sigma: float = 0.5
    attention_level: int = 2
    self_attention_level: int = 1
    n_clusters: int = 5
    cluster_threshold: float = 0.2
    seed: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        check_number("max_iterations", self.max_iterations, 0, integer=True)
        check_number("lr", self.lr, 0.0)
        check_number("weight_decay", self.weight_decay, 0.0)
        if len(self.weights) != 3:
            raise ValueError(f"weights must be (w_at, w_dj, w_bg), got {self.weights!r}")
        for w in self.weights:
            check_number("loss weight", w, 0.0)
        for name in ("at_threshold", "dj_threshold", "bg_threshold"):
            pair = getattr(self, name)
            if len(pair) != 2:
                raise ValueError(f"{name} must be (alpha, beta), got {pair!r}")
            check_number(f"{name} alpha", pair[0], 1e-9)
            check_number(f"{name} beta", pair[1])
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_number("smoothing_sigma", self.smoothing_sigma, 1e-6)
        check_number("attention_level", self.attention_level, 0, 6, integer=True)
        check_number("self_attention_level", self.self_attention_level, 0, 6, integer=True)
        check_number("n_clusters", self.n_clusters, 1, integer=True)
        check_number("cluster_threshold", self.cluster_threshold, 0.0, 1.0)
        check_number("seed", self.seed, 0, integer=True)
        check_flag("gradient_checkpointing", self.gradient_checkpointing)

    def thresholds(self, step: int) -> tuple[float, float, float]:
        """``(TH_at, TH_dj, TH_bg)`` at denoising step ``step`` (Eq. 10)."""
        return tuple(decaying_threshold(step, a, b) for a, b in (self.at_threshold, self.dj_threshold, self.bg_threshold))

    @property
    def uses_background(self) -> bool:
        return self.max_iterations > 0 and self.weights[2] > 0


@dataclass(frozen=True)
class DynamicPrompt:
    """The source prompt with learnable noun tokens.

    Attributes:
        text_encoder: the pipeline's CLIP text model.
        input_ids: ``[1, T]`` token ids of the source prompt.
        spans: each noun's token ``(start, stop)``; every token of a span is learned.
        embedding: ``[T, D]`` the prompt's own encoding (used while the tokens are unchanged,
            so DPL without learning is P2P bit for bit).
    """

    text_encoder: Any
    input_ids: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    embedding: torch.Tensor

    @property
    def positions(self) -> tuple[int, ...]:
        return span_positions(self.spans)

    def initial_tokens(self) -> torch.Tensor:
        """``[P, D_tok]``: the input embeddings of the nouns' tokens (P positions)."""
        table = self.text_encoder.get_input_embeddings().weight
        return table[self.input_ids[0, list(self.positions)].to(table.device)].detach().float().clone()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[1, T, D]``: the prompt encoded with ``tokens [P, D_tok]`` as its nouns' input
        embeddings (a forward hook on the token-embedding module for this call; gradients
        flow to ``tokens``)."""
        module = self.text_encoder.get_input_embeddings()
        positions = torch.tensor(self.positions, device=module.weight.device)

        def substitute(_module, _inputs, output):
            output = output.clone()
            output[:, positions] = tokens.to(output.dtype)
            return output

        handle = module.register_forward_hook(substitute)
        try:
            return self.text_encoder(self.input_ids.to(module.weight.device))[0]
        finally:
            handle.remove()


def attention_levels(unet, latent_hw: tuple[int, int]) -> list[tuple[int, tuple[int, int]]]:
    """``(level, (h, w))`` of every UNet level with cross-attention (down blocks named
    ``CrossAttn...``), level ``k`` holding ``ceil(h / 2**k) x ceil(w / 2**k)`` positions."""
    h, w = latent_hw
    out = []
    for k, block in enumerate(unet.config.down_block_types):
        if "CrossAttn" in block:
            out.append((k, (h, w)))
        h, w = -(-h // 2), -(-w // 2)
    if not out:
        raise ValueError("DPL needs a UNet with cross-attention down blocks")
    return out


def pick_level(levels: list[tuple[int, tuple[int, int]]], wanted: int) -> tuple[int, int]:
    """``(h, w)`` of the level nearest ``wanted`` (the coarser one on a tie)."""
    return min(levels, key=lambda item: (abs(item[0] - wanted), -item[0]))[1]


@contextlib.contextmanager
def _checkpointing(unet, enabled: bool):
    """Gradient checkpointing of ``unet`` inside the block (restored after it)."""
    if not enabled or unet.is_gradient_checkpointing:
        yield
        return
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        unet.disable_gradient_checkpointing()


@dataclass(frozen=True)
class DPLTrace:
    """What DPL did at each step: the losses of its last iteration and its iteration count."""

    losses: list = field(default_factory=list)  # [(L_at, L_dj, L_bg)] per step
    iterations: list = field(default_factory=list)


class DPLInversion:
    """Background map (section 3.3) and the per-step token learning with null-text inversion.

    Args:
        settings: :class:`DPLSettings`.
        null_text: null-text inversion settings, or ``None`` for none (DPL on the DDIM
            inversion trajectory).
    """

    def __init__(self, settings: DPLSettings = DPLSettings(), null_text: NullTextConfig | None = NullTextConfig()):
        self.settings = settings
        self.null_text = null_text

    def levels(self, unet, latent_hw) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(h, w)`` of the loss maps and of the clustered self-attention."""
        levels = attention_levels(unet, latent_hw)
        return pick_level(levels, self.settings.attention_level), pick_level(levels, self.settings.self_attention_level)

    def invert(
        self, scheduler, num_steps: int, x0: torch.Tensor, unet_call, prompt: DynamicPrompt, progress: bool = True
    ) -> tuple[Inversion, torch.Tensor | None]:
        """DDIM inversion of ``x0 [1, C, h, w]`` with the prompt, and the background map ``[h', w']``
        (bool, at the loss level; ``None`` when L_bg is off) from the attention it recorded."""
        cond = prompt.embedding[None].to(x0.device, x0.dtype)
        inverter = DDIMInversion(scheduler, DDIMInversionConfig(num_steps=num_steps))
        if not self.settings.uses_background:
            return inverter.invert(x0, unet_call, cond, progress=progress), None
        latent_hw = tuple(x0.shape[-2:])
        cross_hw, self_hw = self.levels(unet_call.unet, latent_hw)
        state = EditState(layout=BatchLayout.source_only(), num_steps=num_steps, latent_hw=latent_hw)
        self_rec = SelfAttentionRecorder(self_hw)
        cross_rec = AttentionRecorder(prompt.spans, self_hw, layer_hw=cross_hw)

        def choose(name, current):
            if is_self_attention(name):
                return RecordingAttnProcessor(state, self_rec)
            if is_cross_attention(name):
                return RecordingAttnProcessor(state, cross_rec)
            return current

        with unet_call.processors(choose):
            inversion = inverter.invert(x0, unet_call, cond, progress=progress)
        s = self.settings
        found = masks_from_attention(
            self_rec.matrix(), cross_rec.maps(), self_hw, s.n_clusters, s.cluster_threshold, s.seed
        )
        background = resize_nearest(~found.masks.any(dim=0), cross_hw)
        return inversion, background

    @torch.no_grad()
    def optimize(
        self,
        inversion: Inversion,
        unet_call,
        prompt: DynamicPrompt,
        uncond_embedding: torch.Tensor,
        background: torch.Tensor | None,
        progress: bool = True,
    ) -> tuple[Inversion, DPLTrace]:
        """Learns the tokens and (optionally) the null embeddings of every step.

        Args:
            inversion: the DDIM inversion (:meth:`invert`).
            unet_call: a :class:`~aledit.samplers.base.UNetCall`.
            prompt: the source prompt and its nouns.
            uncond_embedding: ``[1, T, D]`` the empty prompt's embedding (NTI starts from it).
            background: ``[h', w']`` background at the loss level, or ``None`` (no L_bg).

        Returns:
            the inversion with ``source_embeddings`` (and ``null_embeddings``), its ``stats``
            increased by the passes spent, and the per-step trace.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("DPL needs gradients: run it outside torch.inference_mode()")
        s = self.settings
        n = inversion.num_steps
        nti = NullTextInversion(self.null_text) if self.null_text is not None else None
        if nti is not None:
            nti.check_steps(n)
        x = inversion.latents[-1]
        bg = background.to(x.device).float() if background is not None and s.weights[2] > 0 else None
        own = prompt.embedding[None].to(x.device, x.dtype)
        initial = prompt.initial_tokens()
        tokens = initial.clone()
        null = uncond_embedding.detach().float()
        sources, nulls, trace = [], [], DPLTrace()
        passes = {"forward": 0, "backward": 0, "text_backward": 0, "token_iterations": 0}

        bar = tqdm(range(n), desc="DPL", disable=not progress, leave=False)
        for i in bar:
            t = inversion.timesteps[i]
            tokens, losses, updates = self.learn_step(unet_call, prompt, x, t, i, tokens, bg)
            passes["forward"] += len(losses)
            passes["backward"] += updates
            passes["text_backward"] += updates
            passes["token_iterations"] += updates
            last = losses[-1] if losses else (float("nan"),) * 3
            trace.losses.append(last)
            trace.iterations.append(updates)
            cond = own if torch.equal(tokens, initial) else prompt.encode(tokens).to(x.dtype)
            sources.append(cond.detach().clone())  # its own storage (the cache saves each)
            if nti is not None:
                null, x, used = nti.step(inversion, i, x, unet_call, cond, null)
                nulls.append(null.to(uncond_embedding.dtype))
                passes["forward"] += used["forward"]
                passes["backward"] += used["backward"]
            else:
                x = inversion.at_step(i)
            bar.set_postfix(t=int(t), L_at=f"{last[0]:.3f}", L_dj=f"{last[1]:.3f}", L_bg=f"{last[2]:.3f}", it=updates)
        stats = {k: inversion.stats.get(k, 0) + v for k, v in passes.items()}
        result = dataclasses.replace(
            inversion,
            null_embeddings=tuple(nulls) if nti is not None else None,
            source_embeddings=tuple(sources),
            stats=stats,
        )
        return result, trace

    def learn_step(
        self,
        unet_call,
        prompt: DynamicPrompt,
        x: torch.Tensor,
        t: torch.Tensor,
        step: int,
        tokens: torch.Tensor,
        background: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[tuple[float, float, float]], int]:
        """The token learning of denoising step ``step`` on ``x [1, C, h, w]`` at ``t``.

        At most ``max_iterations`` evaluations of the losses (one text-encoder and one
        conditional UNet pass each, the maps captured with their graph); after each that is not
        below the step's thresholds, one AdamW step on ``tokens [P, D_tok]``.

        Returns:
            ``(tokens, losses, updates)``: the learned tokens (detached), ``(L_at, L_dj, L_bg)``
            of every evaluation, and the number of AdamW steps.
        """
        s = self.settings
        losses, updates = [], 0
        if s.max_iterations == 0:
            return tokens, losses, updates
        latent_hw = tuple(x.shape[-2:])
        hw, _ = self.levels(unet_call.unet, latent_hw)
        state = EditState(layout=BatchLayout.source_only(), num_steps=1, latent_hw=latent_hw)
        capture = AttentionCapture(hw)
        thresholds = s.thresholds(step)

        def choose(name, current):
            return GraphRecordingAttnProcessor(state, capture) if is_cross_attention(name) else current

        tokens = tokens.detach().clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([tokens], lr=s.lr, weight_decay=s.weight_decay)
        with torch.enable_grad(), unet_call.processors(choose), _checkpointing(unet_call.unet, s.gradient_checkpointing):
            for _ in range(s.max_iterations):
                capture.clear()
                cond = prompt.encode(tokens).to(x.dtype)
                unet_call(x, t, cond)
                found = dpl_losses(
                    capture.aggregate().float(), prompt.spans, hw, background, s.weights, s.reduction, s.smoothing_sigma
                )
                losses.append(tuple(v.item() for v in (found.at.detach(), found.dj.detach(), found.bg.detach())))
                if found.below(thresholds) or not found.total.requires_grad:
                    break
                tokens.grad = torch.autograd.grad(found.total, [tokens])[0]
                optimizer.step()
                updates += 1
        capture.clear()
        return tokens.detach(), losses, updates


class DPLEditSampler(DDIMEditSampler):
    """DPL's preparation (:class:`DPLInversion`), then the dual-branch DDIM loop of
    :class:`~aledit.samplers.ddim_edit.DDIMEditSampler` (the edit feeds ``source_embeddings``
    to the source's conditional row).

    The result is kept in an optional :class:`InversionCache` under the DDIM key plus the DPL
    settings and the prompt's noun tokens, so editing the same image with another target
    costs only the sampling. A fresh preparation also returns, in the edit's ``extras``,
    ``dpl_losses`` (``(L_at, L_dj, L_bg)`` of each step's last iteration), ``dpl_iterations``
    (AdamW steps per step) and ``dpl_background`` (``[h', w']`` bool, when L_bg is on).
    """

    def __init__(
        self,
        scheduler,
        num_steps: int = 50,
        settings: DPLSettings = DPLSettings(),
        null_text: NullTextConfig | None = NullTextConfig(),
    ):
        guidance = null_text.guidance_scale if null_text is not None else 7.5
        super().__init__(
            scheduler, DDIMEditConfig(num_steps=num_steps, null_text=null_text is not None, null_text_guidance=guidance)
        )
        self.dpl = DPLInversion(settings, null_text)
        self.trace: DPLTrace | None = None

    def _cache_key(self, cache, x0, unet_eps, plan) -> str:
        prompt: DynamicPrompt = plan.sampler_inputs
        return cache.key(
            ddim=super()._cache_key(cache, x0, unet_eps, plan),
            dpl=asdict(self.dpl.settings),
            nti=asdict(self.dpl.null_text) if self.dpl.null_text is not None else None,
            ids=tensor_digest(prompt.input_ids),
            spans=[list(span) for span in prompt.spans],
            tokens=tensor_digest(prompt.initial_tokens()),
        )

    cache_label = "DPL tokens and null embeddings"

    def prepare(self, x0: torch.Tensor, unet_eps, plan, *, progress: bool = True, cache=None) -> Inversion:
        """DDIM inversion + DPL of ``x0`` ``[1, C, h, w]`` (from ``cache`` when it holds it).

        ``unet_eps`` must be a :class:`~aledit.samplers.base.UNetCall` (the pipeline passes
        one) and ``plan.sampler_inputs`` a :class:`DynamicPrompt`.
        """
        if not isinstance(plan.sampler_inputs, DynamicPrompt):
            raise TypeError("the DPL sampler needs plan.sampler_inputs = DynamicPrompt (build the plan with DPLMethod)")
        return super().prepare(x0, unet_eps, plan, progress=progress, cache=cache)

    def _invert(self, x0: torch.Tensor, unet_eps, plan, progress: bool) -> Inversion:
        prompt = plan.sampler_inputs
        inversion, background = self.dpl.invert(self.scheduler, self.config.num_steps, x0, unet_eps, prompt, progress)
        uncond = plan.uncond_embedding[None].to(x0.device, x0.dtype)
        inversion, self.trace = self.dpl.optimize(inversion, unet_eps, prompt, uncond, background, progress=progress)
        # returned with the edit (EditOutput.extras), as P2P's blend returns its mask
        plan.extras["dpl_losses"] = list(self.trace.losses)
        plan.extras["dpl_iterations"] = list(self.trace.iterations)
        if background is not None:
            plan.extras["dpl_background"] = background.cpu()
        return inversion
