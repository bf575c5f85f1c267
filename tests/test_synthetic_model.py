"""The packaged synthetic-tiny model, its training code, ``aledit demo`` and the synthetic bench."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from aledit import ALEEditPipeline
from aledit.synthetic import SHAPES, random_scene
from aledit.synthetic.bench import (
    EDIT_TYPES,
    MeanCI,
    bench_cases,
    mean_ci,
    paired_difference_ci,
    run_synthetic_bench,
)
from aledit.synthetic.bench import register as register_bench
from aledit.synthetic.demo import register as register_demo
from aledit.synthetic.demo import run_demo
from aledit.synthetic.model import (
    ABLATION_SWITCHES,
    SYNTHETIC_EDIT_SETTINGS,
    synthetic_model_path,
)
from aledit.synthetic.train import (
    PHRASE_FORMS,
    TrainConfig,
    block_average_init,
    build_components,
    train,
    training_caption,
)

FAST = SYNTHETIC_EDIT_SETTINGS.replace(steps=3)


@pytest.fixture(scope="module")
def synthetic_pipe():
    pipe = ALEEditPipeline.from_pretrained(synthetic_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------
# the packaged model


def test_packaged_model_layout_and_size():
    path = synthetic_model_path()
    for name in ("model_index.json", "README.md", "training.json"):
        assert (path / name).is_file(), name
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "ALEEditPipeline"
    assert {k for k in index if not k.startswith("_")} == {"vae", "text_encoder", "tokenizer", "unet", "scheduler"}
    weights = [p for p in path.rglob("*.safetensors")]
    assert len(weights) == 3
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"model folder is {total / 2**20:.1f} MiB"


def test_packaged_model_config(synthetic_pipe):
    pipe = synthetic_pipe
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.vae_scale_factor == 2
    assert pipe.unet.config.sample_size == 32 and pipe.unet.config.in_channels == pipe.vae.config.latent_channels == 4
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 64
    assert pipe.unet.config.down_block_types == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert pipe.text_encoder.config.vocab_size == 49408
    # CLIP's tokenizer: BOS, EOS, padded with EOS to 77
    tok = pipe.tokenizer
    assert tok.model_max_length == 77
    ids = tok("red-colored circle", padding="max_length", max_length=77).input_ids
    assert ids[0] == 49406 and ids[1:5] == [736, 268, 11775, 7117] and set(ids[5:]) == {49407}
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_packaged_autoencoder_is_exact_on_blocks(synthetic_pipe):
    """The autoencoder averages 2x2 blocks: textures (aligned 2x2 cells) come back exactly."""
    scene = random_scene(3, 3)
    image = Image.fromarray(scene.image)
    latent = synthetic_pipe._encode_image(image, 64, 64)
    assert latent.shape == (1, 4, 32, 32)
    recon = np.asarray(synthetic_pipe._decode(latent)).astype(int)
    blocks = scene.image.reshape(32, 2, 32, 2, 3)
    uniform = (blocks == blocks[:, :1, :, :1]).all(axis=(1, 3, 4))  # [32, 32]
    mask = np.repeat(np.repeat(uniform, 2, 0), 2, 1)
    assert mask.mean() > 0.8
    assert np.abs(recon - scene.image.astype(int))[mask].max() <= 1


# ------------------------------------------------------------------------------------------
# training code


def test_block_average_init_matches_block_means():
    config = TrainConfig()
    vae = build_components(config)["vae"]
    block_average_init(vae)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mode()
        recon = vae.decode(latent).sample
    means = pixels.reshape(2, 3, 32, 2, 32, 2).mean(dim=(3, 5))
    assert torch.allclose(latent[:, :3], means, atol=1e-3) and latent[:, 3:].abs().max() < 1e-6
    assert torch.allclose(recon, means.repeat_interleave(2, 2).repeat_interleave(2, 3), atol=1e-3)


def test_training_captions_follow_the_edit_phrase_scheme():
    config = TrainConfig()
    rng = np.random.default_rng(0)
    scene = random_scene(rng, 3)
    forms = {f.format(color=o.color, shape=o.shape, material=o.material) for o in scene.objects for f in PHRASE_FORMS}
    captions = [training_caption(scene.objects, rng, config) for _ in range(400)]
    empty = sum(c == "" for c in captions)
    assert 20 <= empty <= 70  # caption dropout 10%
    for caption in captions:
        if not caption:
            continue
        phrases = caption.split(" and ")
        assert all(p in forms for p in phrases)
        shapes = [next(s for s in SHAPES if s in p.split()) for p in phrases]
        order = [o.shape for o in scene.objects]
        assert shapes == [s for s in order if s in shapes]  # drawing order kept
    assert any(len(c.split(" and ")) < 3 for c in captions if c)  # objects are left out
    assert any(c.count("made of") == 0 and "colored" in c for c in captions)  # attributes dropped


def test_train_smoke_saves_a_loadable_pipeline(tmp_path):
    config = TrainConfig(steps=2, batch_size=2, unet_channels=(16, 16, 16), text_hidden_size=32, text_intermediate_size=32)
    record = train(config, tmp_path / "m", progress=False)
    assert record["config"]["steps"] == 2 and record["autoencoder"]["latent_std"] > 0
    pipe = ALEEditPipeline.from_pretrained(tmp_path / "m")
    assert pipe.unet.config.block_out_channels == [16, 16, 16]
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------
# demo


def test_demo_runs_end_to_end(synthetic_pipe, tmp_path):
    out = tmp_path / "demo.png"
    result = run_demo(out, seed=1, pipe=synthetic_pipe, settings=FAST)
    assert out.is_file()
    picture = Image.open(out)
    assert picture.width >= 4 * 256 and picture.height > 256
    assert set(result.scores) == {"naive", "ALE"} and set(result.images) == {"naive", "ALE"}
    assert len(result.edit.objects) == 2 and result.images["ALE"].shape == (64, 64, 3)
    for scores in result.scores.values():
        assert 0.0 <= scores.success <= 1.0 and 0.0 <= scores.te_changed <= 1.0


def test_ale_keeps_pixels_away_from_the_edits_exactly(synthetic_pipe, tmp_path):
    """Background blending: every 2x2 block at least one block away from an edited object's
    mask decodes to the autoencoder's reconstruction of the source, bit for bit; the naive edit
    changes them."""
    result = run_demo(tmp_path / "demo.png", seed=2, pipe=synthetic_pipe, settings=FAST)
    edited = np.zeros((64, 64), dtype=bool)
    for e in result.edit.objects:
        edited |= result.scene.masks[e.index]
    blocks = torch.from_numpy(edited.reshape(32, 2, 32, 2).any(axis=(1, 3))).float()[None, None]
    near = torch.nn.functional.max_pool2d(blocks, 3, stride=1, padding=1)[0, 0].bool().numpy()
    far = ~near.repeat(2, 0).repeat(2, 1)
    assert far.mean() > 0.5
    with torch.no_grad():
        latent = synthetic_pipe._encode_image(Image.fromarray(result.scene.image), 64, 64)
        recon = np.asarray(synthetic_pipe._decode(latent)).astype(int)
    ale = result.images["ALE"].astype(int)
    naive = result.images["naive"].astype(int)
    assert np.array_equal(ale[far], recon[far])
    assert (np.abs(naive - recon).max(-1)[far] > 2).mean() > 0.5
    # the same seed gives the same edit
    again = run_demo(tmp_path / "again.png", seed=2, pipe=synthetic_pipe, settings=FAST)
    assert np.array_equal(again.images["ALE"], result.images["ALE"])


def test_demo_cli_registration(synthetic_pipe, tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    register_demo(parser.add_subparsers(dest="command"))
    out = tmp_path / "d.png"
    args = parser.parse_args(["demo", "--out", str(out), "--steps", "2", "--edit-type", "material"])
    monkeypatch.setattr("aledit.synthetic.model.load_synthetic_pipeline", lambda: synthetic_pipe)
    assert args.run(args) == 0
    text = capsys.readouterr().out
    assert "| naive |" in text and "| ALE |" in text and out.is_file()


# ------------------------------------------------------------------------------------------
# bench


def test_mean_ci_on_known_numbers():
    same = mean_ci([0.3] * 10)
    assert same.n == 10 and (same.mean, same.low, same.high) == pytest.approx((0.3, 0.3, 0.3))
    assert mean_ci([2.0]) == MeanCI(2.0, 2.0, 2.0, 1)
    empty = mean_ci([math.nan, math.nan])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.format() == "n/a"
    # 100 Bernoulli values with p = 0.5: standard error 0.05, normal 95% interval 0.5 +- 0.098
    ci = mean_ci([0.0, 1.0] * 50)
    assert ci.mean == 0.5 and ci.n == 100
    assert 0.39 <= ci.low <= 0.41 and 0.59 <= ci.high <= 0.61
    # 1..5 (mean 3): the bootstrap interval lies inside the range and around the mean
    ci = mean_ci([1, 2, 3, 4, 5, math.nan])
    assert ci.n == 5 and ci.mean == 3.0 and 1.5 <= ci.low < 3.0 < ci.high <= 4.5
    assert mean_ci([1, 2, 3, 4, 5]) == mean_ci([1, 2, 3, 4, 5])  # seeded
    assert mean_ci(np.arange(1000) / 999, confidence=0.5).high - mean_ci(np.arange(1000) / 999).high < 0
    diff = paired_difference_ci([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert diff.mean == pytest.approx(0.5) and diff.low == pytest.approx(0.5) and diff.high == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_ci([1.0], confidence=1.5)


def test_bench_cases_cover_types_and_counts():
    cases = bench_cases(30, seed=0)
    assert [c.edit_type for c in cases[:5]] == list(EDIT_TYPES)
    assert {(c.edit_type, c.n_edit) for c in cases} == {(t, k) for t in EDIT_TYPES for k in (1, 2, 3)}
    again = bench_cases(30, seed=0)
    assert all(a.edit.pairs == b.edit.pairs and np.array_equal(a.scene.image, b.scene.image) for a, b in zip(cases, again))
    assert all(len(c.scene.objects) == 3 and set(c.masks) == {e.source_phrase for e in c.edit.objects} for c in cases)


def test_bench_runs_and_tabulates(synthetic_pipe, tmp_path):
    result = run_synthetic_bench(synthetic_pipe, n_edits=5, seed=0, settings=FAST, progress=False)
    assert len(result.records) == 5 * len(ABLATION_SWITCHES) and result.n_cases == 5
    table = result.ablation_table()
    rows = [line for line in table.splitlines()[2:]]
    assert [r.split("|")[1].strip() for r in rows] == list(ABLATION_SWITCHES)
    assert all(r.count("[") >= 4 for r in rows)  # mean [low, high] per score
    counts = result.object_count_table()
    # the first five cases edit one object each (the count cycles every five cases)
    assert "| 1 | naive | 5 |" in counts and "| 1 | ALE | 5 |" in counts and "| 2 |" not in counts
    markdown = result.markdown()
    assert "## Ablation" in markdown and "## By number of edited objects" in markdown
    chart = result.chart()
    assert chart.size[0] > 600 and chart.getextrema() != ((255, 255), (255, 255), (255, 255))
    # paired: every config saw the same edits
    assert len({tuple(sorted(r["case"] for r in result.records if r["config"] == c)) for c in ABLATION_SWITCHES}) == 1


def test_bench_cli_registration(synthetic_pipe, tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers(dest="command"))
    out = tmp_path / "bench"
    args = parser.parse_args(
        ["synthetic", "--edits", "2", "--steps", "2", "--configs", "naive,ALE", "--source-guidance", "3", "--out", str(out)]
    )
    monkeypatch.setattr(ALEEditPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: synthetic_pipe))
    assert args.run(args) == 0
    for name in ("synthetic_bench.md", "synthetic_bench.png", "records.jsonl"):
        assert (out / name).is_file()
    assert len((out / "records.jsonl").read_text().splitlines()) == 4
    assert "| ALE |" in capsys.readouterr().out
    assert "target guidance 8.0, source guidance 3.0," in (out / "synthetic_bench.md").read_text()


def test_missing_model_folder_is_a_one_line_error(tmp_path, capsys):
    from aledit.cli import main

    assert main(["demo", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "d.png")]) == 2
    assert main(["bench", "synthetic", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("aledit: error: model folder does not exist") for line in err)
    assert not (tmp_path / "d.png").exists() and not (tmp_path / "b").exists()


def test_bench_compares_methods_on_the_same_edits(synthetic_pipe):
    configs = ("naive", "ale", "masactrl", "fpe", "infedit", "p2p-ddim")
    result = run_synthetic_bench(synthetic_pipe, n_edits=2, seed=0, configs=configs, settings=FAST, progress=False)
    assert [r["config"] for r in result.records[: len(configs)]] == list(configs)
    assert len({tuple(sorted(r["case"] for r in result.records if r["config"] == c)) for c in configs}) == 1
    markdown = result.markdown()
    assert "# Synthetic benchmark: methods" in markdown and "## Paired differences to naive" in markdown
    assert "| p2p-ddim |" in result.ablation_table()
    # ALE (the method) and ALE (the ablation's full configuration) are the same edit
    again = run_synthetic_bench(synthetic_pipe, n_edits=2, seed=0, configs=("ALE",), settings=FAST, progress=False)
    ale = [r for r in result.records if r["config"] == "ale"]
    for key in ("success", "ti_leakage", "te_changed"):
        assert np.array_equal([r[key] for r in ale], [r[key] for r in again.records], equal_nan=True)
    with pytest.raises(ValueError, match="unknown configuration 'magic'"):
        run_synthetic_bench(synthetic_pipe, n_edits=1, configs=("magic",), progress=False)
