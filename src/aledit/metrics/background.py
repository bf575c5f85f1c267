"""Background preservation (PIE-Bench ``*_unedit_part``): PSNR, MSE, SSIM and LPIPS.

Convention, as PIE-Bench and the ALE authors compute it: both images are scaled to ``[0, 1]`` and
multiplied by the background mask ``1 - union(masks)``; the metric is then computed over the
*whole* image. Masked pixels become 0 in both images and stay in the mean, so a small background
gives a small MSE and a high PSNR; compare numbers only under the same convention.

* PSNR: ``10 log10(1 / MSE)`` with data range 1. Identical images give ``inf`` (what torchmetrics
  and therefore PIE-Bench and the ALE authors' code return); no cap is applied. Averaging is the
  report's business: ``aledit bench report`` averages the finite values and counts the infinite
  ones in its ``PSNR ∞`` column (docs/bench.md, "Means are over finite values"); the authors'
  pandas mean of a group with an untouched background is ``inf``.
* MSE: mean over all pixels and channels, on ``[0, 1]``.
* SSIM: Gaussian window 11x11, sigma 1.5, ``k1 = 0.01``, ``k2 = 0.03``, data range 1, reflect
  padding by 5 pixels and the mean over the full ``H x W`` map, as torchmetrics computes it since
  Lightning-AI/torchmetrics#2721 (September 2024; 1.4.3 has it, as does the 1.7.1 the ALE authors
  pinned). torchmetrics up to 1.4.0, which PIE-Bench used in 2023, cropped a 5-pixel border
  before the mean, as skimage does; on ALE-Bench edits the two differ by up to 5.7e-4 (issue 14's
  comparison), so compare SSIM with older tables only to about 1e-3.
* LPIPS: SqueezeNet variant on ``[-1, 1]`` inputs (torchmetrics'
  ``LearnedPerceptualImagePatchSimilarity(net_type="squeeze")``), which needs torchvision; without
  it LPIPS is reported as NaN with a reason, never estimated.

torchmetrics' functional PSNR/MSE/SSIM are used when it is installed (``backend="auto"``); the
built-in formulas below are used otherwise and match them to float precision.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import (
    ImageLike,
    MaskLike,
    MetricUnavailable,
    background_mask,
    match_size,
    to_mask,
    unavailable_value,
)

__all__ = [
    "Backend",
    "LpipsFn",
    "TorchmetricsLpips",
    "background_metrics",
    "load_lpips",
    "lpips_distance",
    "masked_unit_image",
    "mse",
    "psnr",
    "ssim",
]

Backend = Literal["auto", "torchmetrics", "builtin"]
LpipsFn = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, float]]
"""``fn(a, b)`` with ``a, b`` in ``[-1, 1]``, ``[1, 3, H, W]``; returns the LPIPS distance."""

SSIM_SIGMA = 1.5
SSIM_KERNEL_SIZE = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03


@dataclass(frozen=True)
class _TorchmetricsFunctions:
    mean_squared_error: Callable
    peak_signal_noise_ratio: Callable
    structural_similarity_index_measure: Callable


@functools.lru_cache(maxsize=1)
def _torchmetrics_functional() -> _TorchmetricsFunctions | None:
    try:
        image = importlib.import_module("torchmetrics.functional.image")
        regression = importlib.import_module("torchmetrics.functional.regression")
    except ImportError:
        return None
    return _TorchmetricsFunctions(
        regression.mean_squared_error, image.peak_signal_noise_ratio, image.structural_similarity_index_measure
    )


def _functional(backend: Backend) -> _TorchmetricsFunctions | None:
    """torchmetrics' functions for ``backend``, or None for the built-in formulas."""
    if backend == "builtin":
        return None
    tm = _torchmetrics_functional()
    if tm is None and backend == "torchmetrics":
        raise ImportError("backend='torchmetrics' needs torchmetrics: pip install 'aledit[metrics]'")
    return tm


def masked_unit_image(image: np.ndarray, mask: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """``image / 255 * mask`` as ``float64 [1, 3, H, W]``.

    Args:
        image: RGB ``uint8`` ``[H, W, 3]``.
        mask: ``[H, W]`` in ``[0, 1]``.
    """
    unit = torch.tensor(image, dtype=torch.float64, device=device) / 255.0
    weight = torch.tensor(mask, dtype=torch.float64, device=device)
    return (unit * weight[:, :, None]).permute(2, 0, 1)[None].contiguous()


def mse(preds: torch.Tensor, target: torch.Tensor, backend: Backend = "auto") -> float:
    """Mean squared error over every element of ``[B, C, H, W]`` tensors."""
    tm = _functional(backend)
    if tm is not None:
        return float(tm.mean_squared_error(preds, target))
    return float(torch.mean((preds - target) ** 2))


def psnr(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, backend: Backend = "auto") -> float:
    """``10 log10(data_range^2 / MSE)`` over every element of ``[B, C, H, W]``; ``inf`` when equal."""
    tm = _functional(backend)
    if tm is not None:
        return float(tm.peak_signal_noise_ratio(preds, target, data_range=data_range))
    err = float(torch.mean((preds - target) ** 2))
    return math.inf if err == 0.0 else 10.0 * math.log10(data_range**2 / err)


def _gaussian_1d(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    half = (SSIM_KERNEL_SIZE - 1) / 2
    dist = torch.arange(-half, half + 1, dtype=dtype, device=device)
    gauss = torch.exp(-0.5 * (dist / SSIM_SIGMA) ** 2)
    return gauss / gauss.sum()


def _ssim_builtin(preds: torch.Tensor, target: torch.Tensor, data_range: float) -> float:
    batch, channels, height, width = preds.shape
    pad = SSIM_KERNEL_SIZE // 2
    if height <= pad or width <= pad:
        raise ValueError(f"SSIM needs images larger than {pad}x{pad} pixels, got {height}x{width}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    stacked = torch.cat([preds, target, preds * preds, target * target, preds * target])
    stacked = F.pad(stacked, (pad, pad, pad, pad), mode="reflect")
    gauss = _gaussian_1d(preds.dtype, preds.device)
    # The 11x11 Gaussian window is separable: filter rows, then columns.
    stacked = F.conv2d(stacked, gauss.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    stacked = F.conv2d(stacked, gauss.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    mu_p, mu_t, e_pp, e_tt, e_pt = stacked.split(batch)
    var_p = torch.clamp(e_pp - mu_p**2, min=0.0)
    var_t = torch.clamp(e_tt - mu_t**2, min=0.0)
    cov = e_pt - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return float(ssim_map.reshape(batch, -1).mean(-1).mean())


def ssim(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, backend: Backend = "auto") -> float:
    """Structural similarity of ``[B, C, H, W]`` tensors (Gaussian 11x11, sigma 1.5, reflect pad,
    mean over the full map); see the module docstring."""
    tm = _functional(backend)
    if tm is not None:
        return float(tm.structural_similarity_index_measure(preds, target, data_range=data_range))
    return _ssim_builtin(preds, target, data_range)


@dataclass(frozen=True, eq=False)
class TorchmetricsLpips:
    """torchmetrics' LPIPS module as an :data:`LpipsFn` (inputs in ``[-1, 1]``, float32)."""

    module: torch.nn.Module

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> float:
        device = next(self.module.parameters()).device
        value = float(self.module(a.to(device, torch.float32), b.to(device, torch.float32)))
        self.module.reset()  # the module accumulates a running mean; keep each call independent
        return value


def load_lpips(net_type: str = "squeeze", device: str | torch.device = "cpu") -> TorchmetricsLpips | MetricUnavailable:
    """torchmetrics' LPIPS with the ``net_type`` backbone, or :class:`MetricUnavailable` saying why
    not (torchmetrics or torchvision missing, backbone weights not downloadable)."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        return MetricUnavailable("bg_lpips", "torchvision is not installed (LPIPS needs its SqueezeNet backbone)")
    try:
        lpip = importlib.import_module("torchmetrics.image.lpip")
    except ImportError:
        return MetricUnavailable("bg_lpips", "torchmetrics is not installed: pip install 'aledit[metrics]'")
    try:
        module = lpip.LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=False)
    except Exception as exc:  # weights download, version mismatch: report, never crash the evaluation
        return MetricUnavailable("bg_lpips", f"could not build LPIPS ({net_type}): {type(exc).__name__}: {exc}")
    return TorchmetricsLpips(module.to(device).eval())


def lpips_distance(preds: torch.Tensor, target: torch.Tensor, lpips: LpipsFn | MetricUnavailable | None) -> float:
    """LPIPS of ``[B, 3, H, W]`` images in ``[0, 1]`` (mapped to ``[-1, 1]``); NaN when unavailable."""
    if lpips is None:
        lpips = MetricUnavailable("bg_lpips", "no LPIPS model given (MetricModels.lpips is None)")
    if isinstance(lpips, MetricUnavailable):
        return unavailable_value(lpips)
    return float(lpips(preds * 2 - 1, target * 2 - 1))


def background_metrics(
    source: ImageLike,
    edited: ImageLike,
    masks: Sequence[MaskLike],
    lpips: LpipsFn | MetricUnavailable | None = None,
    backend: Backend = "auto",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """PSNR, LPIPS, MSE and SSIM of the background ``1 - union(masks)``, source vs edited.

    Args:
        source, edited: PIL images or RGB ``uint8`` arrays; ``edited`` is resized to the source.
        masks: one mask per edited object, ``[H, W]`` at the source size (see ``inputs.to_mask``).
        lpips: an :data:`LpipsFn`, or :class:`MetricUnavailable` / None for NaN.

    Returns:
        ``bg_psnr``, ``bg_lpips``, ``bg_mse``, ``bg_ssim``; all NaN when the masks cover the whole
        image (PIE-Bench's rule for an empty region).
    """
    src, edt = match_size(source, edited)
    hw = src.shape[:2]
    background = background_mask([to_mask(m, hw, name=f"mask {i}") for i, m in enumerate(masks)])
    if not background.any():
        return {"bg_psnr": math.nan, "bg_lpips": math.nan, "bg_mse": math.nan, "bg_ssim": math.nan}
    a = masked_unit_image(src, background, device)
    b = masked_unit_image(edt, background, device)
    return {
        "bg_psnr": psnr(b, a, backend=backend),
        "bg_lpips": lpips_distance(b, a, lpips),
        "bg_mse": mse(b, a, backend=backend),
        # float32: CPU convolutions in float64 are ~20x slower (20 s for a 1000 px image) and SSIM
        # moves by < 1e-6.
        "bg_ssim": ssim(b.float(), a.float(), backend=backend),
    }
