"""What the attention processors of one edit share: the batch layout and the current step.

The UNet sees one batch per step holding both branches. :class:`BatchLayout` says which row is
which, so no processor slices heads or rows by literal numbers. :class:`EditState` is created by
the sampler for one call and passed to the processors it installs (never a module global).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BatchLayout", "EditState", "Row", "SOURCE", "TARGET"]

SOURCE = "source"
TARGET = "target"


@dataclass(frozen=True)
class Row:
    """One item of the UNet batch: a branch and whether it is the text-conditioned half."""

    branch: str
    conditional: bool


@dataclass(frozen=True)
class BatchLayout:
    """Order of the rows in the UNet batch.

    A branch whose guidance scale is 1 needs no unconditional row, so with the paper's source
    guidance of 1 the batch is ``[source/cond, target/uncond, target/cond]`` (3 rows, not 4).
    """

    rows: tuple[Row, ...]

    @classmethod
    def dual_branch(cls, source_uncond: bool, target_uncond: bool) -> "BatchLayout":
        rows = []
        if source_uncond:
            rows.append(Row(SOURCE, False))
        rows.append(Row(SOURCE, True))
        if target_uncond:
            rows.append(Row(TARGET, False))
        rows.append(Row(TARGET, True))
        return cls(tuple(rows))

    @classmethod
    def source_only(cls, source_uncond: bool = False) -> "BatchLayout":
        """Rows of the source branch alone: the target then follows the source exactly
        (used to watch a reconstruction, e.g. for attention-derived masks)."""
        rows = ([Row(SOURCE, False)] if source_uncond else []) + [Row(SOURCE, True)]
        return cls(tuple(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def index(self, branch: str, conditional: bool) -> int | None:
        for i, row in enumerate(self.rows):
            if row.branch == branch and row.conditional == conditional:
                return i
        return None

    def embeddings(self, source_cond, target_cond, uncond, target_uncond=None):
        """``[rows, T, D]``: each row's text embedding (``[T, D]`` each) in this layout's order;
        unconditional rows take ``uncond`` (the target's ``target_uncond`` when given)."""
        picked = []
        for row in self.rows:
            if row.conditional:
                picked.append(source_cond if row.branch == SOURCE else target_cond)
            else:
                picked.append(target_uncond if row.branch == TARGET and target_uncond is not None else uncond)
        return torch.stack(picked)

    def rows_of(self, branch: str) -> list[int]:
        return [i for i, row in enumerate(self.rows) if row.branch == branch]

    def source_partner(self, i: int) -> int:
        """The source row whose attention a target row ``i`` takes: the same guidance half if
        the source branch has it, else the source's conditional row."""
        partner = self.index(SOURCE, self.rows[i].conditional)
        return partner if partner is not None else self.index(SOURCE, True)


@dataclass
class EditState:
    """Mutable per-call state: the sampler advances ``step``; processors read it.

    Attributes:
        layout: the rows of the UNet batch.
        num_steps: number of denoising steps of the call.
        latent_hw: ``(h, w)`` of the latent, to find each attention layer's resolution.
        step: index of the current denoising step, 0-based.
        alpha_t: alphas_cumprod of the current step's timestep (the noise level of the latents
            the step starts from), set by the sampler; InfEdit's blend threshold reads it.
    """

    layout: BatchLayout
    num_steps: int
    latent_hw: tuple[int, int]
    step: int = 0
    alpha_t: float | None = None

    def layer_hw(self, tokens: int) -> tuple[int, int]:
        """``(h, w)`` of an attention layer with ``tokens`` spatial positions.

        UNet downsampling rounds up (a stride-2 conv with padding 1), so a level k holds
        ``ceil(h / 2**k) x ceil(w / 2**k)`` positions.
        """
        h, w = self.latent_hw
        for _ in range(16):
            if h * w == tokens:
                return h, w
            h, w = -(-h // 2), -(-w // 2)
        raise ValueError(f"no UNet level of a {self.latent_hw} latent has {tokens} positions")
