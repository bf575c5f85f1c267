"""Small pipelines built from configs, for tests and for running offline.

``tiny-random`` has random weights with fixed seeds and CLIP's real tokenizer: it exercises the
whole editing path on a fresh machine with no download, and produces no meaningful edit.
"""

from __future__ import annotations

import torch

__all__ = ["TINY_RANDOM", "tiny_random_components"]

TINY_RANDOM = "tiny-random"


def tiny_random_components(seed: int = 0, cross_attention_dim: int = 32, time_cond_proj_dim: int | None = None) -> dict:
    """UNet, VAE, text encoder, tokenizer and LCM scheduler of a tiny SD-like model.

    The UNet has two resolutions with cross-attention at both (so RGB-CAM sees several layer
    sizes), the VAE downsamples by 4 (``vae_scale_factor`` = 4), the text encoder is a 2-layer
    CLIP text transformer over the real 49,408-token vocabulary. ``time_cond_proj_dim`` makes
    the UNet guidance-distilled like an LCM (it then takes LCM's guidance embedding).
    """
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cross_attention_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = LCMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
    }
