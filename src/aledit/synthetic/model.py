"""The packaged ``synthetic-tiny`` model: where it lives and the engine settings it needs.

``synthetic-tiny`` is a tiny Stable-Diffusion-layout model (``AutoencoderKL``, ``CLIPTextModel``
with CLIP's real tokenizer, ``UNet2DConditionModel``, scheduler config) trained from scratch on
the synthetic world by :mod:`aledit.synthetic.train`; its folder ships inside the package
(``aledit/models/synthetic-tiny``, see its ``README.md``). Load it like any checkpoint::

    from aledit import ALEEditPipeline
    from aledit.synthetic.model import synthetic_model_path, SYNTHETIC_EDIT_SETTINGS

    pipe = ALEEditPipeline.from_pretrained(synthetic_model_path())
    s = SYNTHETIC_EDIT_SETTINGS
    out = pipe.edit(scene_image, edits, masks, steps=s.steps, size=s.size, config=s.config())

It is a plain epsilon-prediction DDPM model (not a distilled LCM), so the engine's LCM-style
sampler (predict x0, then renoise with fresh noise, ``eta = 1``) is not what it was trained for;
:data:`SYNTHETIC_EDIT_SETTINGS` holds the settings measured to work with it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..methods.ale import ALEConfig

__all__ = [
    "is_saved_pipeline",
    "ABLATION_SWITCHES",
    "SYNTHETIC_EDIT_SETTINGS",
    "SYNTHETIC_TINY",
    "SyntheticEditSettings",
    "SyntheticModelMissingError",
    "load_synthetic_pipeline",
    "synthetic_model_path",
]

SYNTHETIC_TINY = "synthetic-tiny"

# The paper's ablation (Table 13) plus the naive two-branch edit, as ALEConfig switches.
ABLATION_SWITCHES: dict[str, dict[str, bool]] = {
    "naive": {"ore": False, "rgb_cam": False, "background_blend": False},
    "ORE": {"ore": True, "rgb_cam": False, "background_blend": False},
    "ORE+RGB-CAM": {"ore": True, "rgb_cam": True, "background_blend": False},
    "ORE+BB": {"ore": True, "rgb_cam": False, "background_blend": True},
    "ALE": {"ore": True, "rgb_cam": True, "background_blend": True},
}


class SyntheticModelMissingError(FileNotFoundError):
    """The packaged model folder is not where the package expects it."""


def is_saved_pipeline(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a saved pipeline (diffusers layout: ``model_index.json``), as
    training writes it and its checkpoints are."""
    return os.path.isfile(os.path.join(folder, "model_index.json"))


def synthetic_model_path() -> Path:
    """The folder of the packaged ``synthetic-tiny`` model (has ``model_index.json``); pass it
    to ``ALEEditPipeline.from_pretrained``.

    Raises:
        SyntheticModelMissingError: the package was installed without its model data.
    """
    path = Path(os.fspath(resources.files("aledit").joinpath("models", SYNTHETIC_TINY)))
    if not is_saved_pipeline(path):
        raise SyntheticModelMissingError(
            f"the synthetic-tiny model is missing from {path}; reinstall aledit with its package data "
            "(pip install -e .) or train one with `python scripts/train_synthetic.py --out DIR`"
        )
    return path


def load_synthetic_pipeline(**kwargs):
    """``ALEEditPipeline.from_pretrained(synthetic_model_path(), **kwargs)``."""
    from ..pipeline import ALEEditPipeline

    return ALEEditPipeline.from_pretrained(synthetic_model_path(), **kwargs)


@dataclass(frozen=True)
class SyntheticEditSettings:
    """Engine settings for editing synthetic scenes with ``synthetic-tiny``.

    Attributes:
        size: working resolution (the scenes' 64; latents are 32x32).
        steps: denoising steps (LCM timesteps of a 50-step schedule; 50 = every one of them).
        eta: share of fresh noise per step (0: DDIM-like, what an epsilon model expects).
        target_guidance: classifier-free guidance of the target branch (a 20-edit sweep of
            4 / 8 / 12 gave ALE success 0.04 / 0.07 / 0.07 with TI leakage 0.002 / 0.023 / 0.032).
        source_guidance: classifier-free guidance of the source branch.
        dilation_ratio: mask dilation, ratio of the image side.
    """

    size: int = 64
    steps: int = 20
    eta: float = 0.0
    target_guidance: float = 8.0
    source_guidance: float = 1.0
    dilation_ratio: float = 0.0

    def config(self, **switches) -> ALEConfig:
        """The :class:`ALEConfig` with these settings and the given switches
        (``ore``, ``rgb_cam``, ``background_blend``, ``self_replace``, ...)."""
        return ALEConfig(
            eta=self.eta,
            target_guidance=self.target_guidance,
            source_guidance=self.source_guidance,
            dilation_ratio=self.dilation_ratio,
            **switches,
        )

    def options(self, method: str, **switches) -> dict:
        """Options of any registered method for this model: the settings above applied to the
        config fields the method has (``eta``, ``target_guidance`` / ``guidance``,
        ``source_guidance``, ``dilation_ratio``), then ``switches``. Every method thus runs at
        the same guidance and step count, and the non-distilled model gets eta 0."""
        from ..methods.registry import method_info

        defaults = method_info(method).defaults()
        # only numeric fields: ALE's ``guidance`` is a mode ("cfg" / "embedded"), not a scale
        fields = {name for name, value in defaults.items() if isinstance(value, float)}
        wanted = {
            "eta": self.eta,
            "target_guidance": self.target_guidance,
            "guidance": self.target_guidance,
            "source_guidance": self.source_guidance,
            "dilation_ratio": self.dilation_ratio,
        }
        return {**{k: v for k, v in wanted.items() if k in fields}, **switches}

    def replace(self, **changes) -> SyntheticEditSettings:
        return dataclasses.replace(self, **changes)


SYNTHETIC_EDIT_SETTINGS = SyntheticEditSettings()
