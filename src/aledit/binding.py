"""BindEdit's attention energies and re-balancing, as pure functions (our formulation).

BindEdit (2026) is published as a summary only; :doc:`docs/bindedit.md` gives the formulation
these functions implement and why. Notation, for one attention layer with ``HW`` positions:

* ``K`` edited objects; ``M_k`` ``[HW]`` the region (mask) of object k at the layer's resolution;
* ``T_k`` the target-prompt tokens of object k's target phrase;
* ``P [heads, HW, T]`` the target row's cross-attention probabilities, and
  ``a_k(x) = mean_heads mean_{t in T_k} P[h, x, t]`` the object map ``[K, HW]``
  (:func:`object_maps`);
* ``S [HW, HW]`` the target row's self-attention probabilities, averaged over heads (each row
  sums to 1).

Energies (all in [0, 1] except fidelity, all 0 at the ideal):

* cross binding ``E_x = mean_k sum_{x not in M_k} a_k(x) / sum_x a_k(x)``: the share of token
  set k's attention mass outside region k (Edit-Token Leakage, :func:`cross_leakage_energy`);
* self binding ``E_s = mean_k mean_{q in M_k} sum_{x in O_k} S[q, x]``, ``O_k`` the cells of the
  other objects' regions that are not in ``M_k``: the self-attention mass flowing from region k
  to the other objects (:func:`self_leakage_energy`);
* region fidelity ``E_f = mean_k mean_{x in M_k} (a_k(x) / m_k - 1)^2``, ``m_k`` the mean of
  ``a_k`` on ``M_k``: the squared coefficient of variation of the object's map inside its region
  (0 when the concept is attended uniformly over the region, :func:`region_fidelity_energy`).

Re-balancing multiplies the probability of the *new* target tokens of object k (those not in its
source phrase) by ``s`` at the positions of ``M_k`` and renormalises each position's
distribution; it is exactly a logit bias of ``log s`` there (:func:`rebalance_bias`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "cross_leakage_energy",
    "guided_latent",
    "new_token_positions",
    "object_maps",
    "rebalance_bias",
    "region_fidelity_energy",
    "self_leakage_energy",
]

_EPS = 1e-8


def object_maps(probs: torch.Tensor, token_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """``probs [heads, HW, T]`` -> ``[K, HW]``: per object, the mean over heads and over its
    token positions ``token_sets[k]`` (each non-empty)."""
    mean = probs.mean(dim=0)  # [HW, T]
    return torch.stack([mean[:, list(tokens)].mean(dim=-1) for tokens in token_sets])


def cross_leakage_energy(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Cross binding energy ``E_x`` (module docstring).

    Args:
        maps: ``[K, HW]`` non-negative object maps (:func:`object_maps`).
        regions: ``[K, HW]`` bool, object k's region.

    Returns:
        scalar: mean over objects of the share of each map's mass outside its region.
    """
    outside = (maps * (~regions).to(maps.dtype)).sum(dim=-1)
    return (outside / (maps.sum(dim=-1) + _EPS)).mean()


def self_leakage_energy(self_probs: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Self binding energy ``E_s`` (module docstring).

    Args:
        self_probs: ``[HW, HW]`` self-attention probabilities (query, key), rows summing to 1.
        regions: ``[K, HW]`` bool.

    Returns:
        scalar: mean over objects (with a non-empty region) of the mean, over the queries in
        region k, of the attention mass on the other objects' cells outside region k. Objects
        whose region is empty are left out; 0 when none is left.
    """
    regions_f = regions.to(self_probs.dtype)
    others = (regions_f.sum(dim=0, keepdim=True) - regions_f).clamp(max=1.0) * (1.0 - regions_f)  # [K, HW]
    flow = self_probs @ others.T  # [HW(query), K]: mass of each query on O_k
    sizes = regions_f.sum(dim=-1)  # [K]
    per_object = (flow.T * regions_f).sum(dim=-1) / sizes.clamp(min=1.0)
    present = sizes > 0
    if not bool(present.any()):
        return self_probs.sum() * 0.0
    return per_object[present].mean()


def region_fidelity_energy(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Region fidelity energy ``E_f`` (module docstring).

    Args:
        maps: ``[K, HW]`` non-negative object maps.
        regions: ``[K, HW]`` bool.

    Returns:
        scalar: mean over objects (with a non-empty region) of the squared coefficient of
        variation of the map inside the region; 0 when no region is non-empty.
    """
    regions_f = regions.to(maps.dtype)
    sizes = regions_f.sum(dim=-1)
    mean_in = (maps * regions_f).sum(dim=-1) / sizes.clamp(min=1.0)  # m_k
    relative = maps / (mean_in[:, None] + _EPS) - 1.0
    cv2 = (relative.square() * regions_f).sum(dim=-1) / sizes.clamp(min=1.0)
    present = sizes > 0
    if not bool(present.any()):
        return maps.sum() * 0.0
    return cv2[present].mean()


def rebalance_bias(regions: torch.Tensor, token_sets: Sequence[Sequence[int]], scale: float, tokens: int) -> torch.Tensor:
    """``[HW, T]`` logit bias of re-balancing: ``log(scale)`` at (positions of ``regions[k]``,
    tokens ``token_sets[k]``), 0 elsewhere.

    ``softmax(l + bias)`` equals scaling those probabilities by ``scale`` and renormalising each
    position's distribution. A token listed for several objects gets the bias in each of their
    regions.

    Args:
        regions: ``[K, HW]`` bool.
        token_sets: per object, the token positions to amplify (may be empty).
        scale: the probability scale ``s > 0``.
        tokens: ``T``, the number of text tokens.
    """
    if scale <= 0:
        raise ValueError(f"rebalance scale must be > 0, got {scale}")
    bias = torch.zeros(regions.shape[1], tokens)
    log_s = math.log(scale)
    for region, positions in zip(regions, token_sets):
        for t in positions:
            bias[region, t] = log_s
    return bias


def new_token_positions(source_ids: Sequence[int], target_ids: Sequence[int], target_span: tuple[int, int]) -> tuple[int, ...]:
    """Positions in ``target_span`` whose token id does not occur in ``source_ids`` (the source
    phrase's tokens): ``"cat" -> "red cat"`` gives the position of ``red``, ``"cat" -> "dog"`` that
    of ``dog``, ``"cat" -> "cat"`` nothing."""
    source = set(source_ids)
    start, stop = target_span
    return tuple(p for p in range(start, stop) if target_ids[p] not in source)


def guided_latent(latent: torch.Tensor, grad: torch.Tensor, step_size: float, noise_level: float) -> torch.Tensor:
    """One normalised gradient step ``x - step_size * sigma * g / rms(g)`` (``sigma`` =
    ``noise_level``, ``sqrt(1 - alpha_t)``); ``x`` unchanged where ``g`` is 0 everywhere.

    Args:
        latent: ``[1, C, h, w]``.
        grad: ``[1, C, h, w]`` gradient of the energy with respect to ``latent``.
    """
    rms = grad.square().mean().sqrt()
    if float(rms) == 0.0:
        return latent
    return latent - step_size * noise_level * grad / rms
