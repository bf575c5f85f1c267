"""Attention processors (diffusers ``AttnProcessor`` style) and what they share."""

from .base import EditAttnProcessor
from .install import attention_processors
from .mutual_self import MutualSelfAttentionProcessor
from .recorder import AttentionRecorder, SelfAttentionRecorder
from .recording import RecordingAttnProcessor
from .region_cross import RegionGuidance, RegionGuidedCrossAttentionProcessor
from .state import SOURCE, TARGET, BatchLayout, EditState, Row

__all__ = [
    "AttentionRecorder",
    "BatchLayout",
    "EditAttnProcessor",
    "EditState",
    "MutualSelfAttentionProcessor",
    "RegionGuidance",
    "RecordingAttnProcessor",
    "RegionGuidedCrossAttentionProcessor",
    "SelfAttentionRecorder",
    "Row",
    "SOURCE",
    "TARGET",
    "attention_processors",
]
