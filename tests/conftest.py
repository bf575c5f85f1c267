import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tokenizer():
    from aledit.tokenizer import clip_tokenizer

    return clip_tokenizer()


@pytest.fixture(scope="session")
def tiny_components():
    from aledit.presets import tiny_random_components

    return tiny_random_components(seed=0)


@pytest.fixture(scope="session")
def text_encoder(tiny_components):
    return tiny_components["text_encoder"]


@pytest.fixture()
def pipe():
    from aledit import ALEEditPipeline

    return ALEEditPipeline.from_pretrained("tiny-random")


# Tiny CLIP and DINO (random weights, seed 0) for the metrics that need a model.
@pytest.fixture(scope="session")
def tiny_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    from aledit.metrics import HFClipEncoder
    from aledit.metrics.clip_score import _pil_clip_image_processor_class

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    processor = _pil_clip_image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return HFClipEncoder(model=CLIPModel(config).eval(), image_processor=processor, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_dino():
    from transformers import ViTConfig, ViTModel

    from aledit.metrics import DinoKeyExtractor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        qkv_bias=True,
        layer_norm_eps=1e-6,
    )
    return DinoKeyExtractor(ViTModel(config, add_pooling_layer=False).eval())


@pytest.fixture(scope="session")
def bench_dir():
    """The ALE-Bench folder that ships inside the package (images, masks, prompts)."""
    from aledit.bench.dataset import ale_bench_root

    return str(ale_bench_root())
