"""Masking for pretraining as pure functions of pre-drawn random numbers (BERT: Devlin et al., 2019; LXMERT: Tan &
Bansal, 2019).

The caller draws the uniforms (the data module draws them per example from ``(seed, epoch, index)``, tests draw them
from a generator), so the same example is masked the same way whatever batch, rank or resume it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm.config import ConfigError, ranged

IGNORE = -100  # label of positions that are not predicted


@dataclass
class MaskingConfig:
    """How much of each modality is masked and how."""

    token_prob: float = ranged(0.15, ge=0, le=1)  # fraction of maskable text tokens selected for masked LM
    token_mask: float = ranged(0.8, ge=0, le=1)  # of the selected: replaced by [MASK] ...
    token_random: float = ranged(0.1, ge=0, le=1)  # ... by a random word (the rest are kept)
    region_prob: float = ranged(0.15, ge=0, le=1)  # fraction of real regions selected for masked region modelling
    region_zero: float = ranged(0.8, ge=0, le=1)  # of the selected: features zeroed ...
    region_swap: float = ranged(0.1, ge=0, le=1)  # ... replaced by another region's features (the rest are kept)
    mismatch_prob: float = ranged(0.5, ge=0, le=1)  # share of pairs given another image's text (never one of its own)
    # score masked LM on mismatched pairs too (LXMERT's released code does); off, their masked words carry no target:
    # a word of a text about another image (the swapped word of a hard negative above all) has a target the image
    # contradicts. Mismatched texts are masked all the same, or an unmasked text would give its pair away.
    mlm_mismatched: bool = False

    def check(self) -> None:
        """The kept share of selected tokens/regions cannot be negative.

        Raises:
            ConfigError: naming the two fields.
        """
        if self.token_mask + self.token_random > 1:
            raise ConfigError(f"masking.token_mask + masking.token_random must be <= 1, got {self.token_mask} + "
                              f"{self.token_random}")
        if self.region_zero + self.region_swap > 1:
            raise ConfigError(f"masking.region_zero + masking.region_swap must be <= 1, got {self.region_zero} + "
                              f"{self.region_swap}")


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, u: torch.Tensor, random_ids: torch.Tensor,
                mask_id: int, cfg: MaskingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 token masking.

    Args:
        input_ids: ``[B, T]`` token ids.
        maskable: ``[B, T]`` bool, False for special tokens and padding (never masked).
        u: ``[B, T, 2]`` uniforms in [0, 1): ``u[..., 0]`` selects, ``u[..., 1]`` picks the replacement.
        random_ids: ``[B, T]`` ids used where a random word replaces the token.
        mask_id: id of ``[MASK]``.

    Returns:
        ``(masked_ids, labels)``: labels hold the original id at selected positions and ``IGNORE`` elsewhere.
    """
    selected = maskable & (u[..., 0] < cfg.token_prob)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    to_mask = selected & (u[..., 1] < cfg.token_mask)
    to_random = selected & (u[..., 1] >= cfg.token_mask) & (u[..., 1] < cfg.token_mask + cfg.token_random)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, labels


def mask_regions(feats: torch.Tensor, region_mask: torch.Tensor, u: torch.Tensor, donors: torch.Tensor,
                 cfg: MaskingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked region modelling: 80% of the selected regions zeroed, 10% replaced by another region, 10% kept.

    Args:
        feats: ``[B, K, D]`` region features.
        region_mask: ``[B, K]`` 1 for real regions (padding is never selected).
        u: ``[B, K, 2]`` uniforms: ``u[..., 0]`` selects, ``u[..., 1]`` picks the action.
        donors: ``[B, K, D]`` replacement features, used where a region is swapped; the data module takes them from
            regions of other images (LXMERT draws them from the whole dataset too).

    Returns:
        ``(masked_feats, selected)`` with ``selected`` a ``[B, K]`` bool of the regions to predict.
    """
    selected = region_mask.bool() & (u[..., 0] < cfg.region_prob)
    zero = selected & (u[..., 1] < cfg.region_zero)
    swap = selected & (u[..., 1] >= cfg.region_zero) & (u[..., 1] < cfg.region_zero + cfg.region_swap)
    out = feats.clone()  # then only the selected rows are written (and only the swapped rows of donors read)
    out[swap] = donors[swap].to(feats.dtype)
    out[zero] = 0.0
    return out, selected
