import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "ale-bench")


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


@pytest.fixture(scope="session")
def bench_dir():
    if not os.path.isdir(SHARED):
        pytest.skip("../shared/ale-bench is not beside the checkout")
    return SHARED
