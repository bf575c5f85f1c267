"""Attention processors (diffusers ``AttnProcessor`` style) and what they share."""

from .base import EditAttnProcessor
from .cross_control import CrossAttentionControlProcessor, CrossControl
from .install import attention_processors
from .mutual_self import MutualSelfAttentionProcessor
from .recorder import AttentionRecorder, SelfAttentionRecorder
from .recording import RecordingAttnProcessor
from .region_cross import RegionGuidance, RegionGuidedCrossAttentionProcessor
from .schedule import LeadingFraction, StepRange, StepWindow, UpToFraction
from .state import SOURCE, TARGET, BatchLayout, EditState, Row
from .step_maps import StepMaps

__all__ = [
    "AttentionRecorder",
    "BatchLayout",
    "CrossAttentionControlProcessor",
    "CrossControl",
    "EditAttnProcessor",
    "EditState",
    "LeadingFraction",
    "MutualSelfAttentionProcessor",
    "RegionGuidance",
    "RecordingAttnProcessor",
    "RegionGuidedCrossAttentionProcessor",
    "SelfAttentionRecorder",
    "Row",
    "StepMaps",
    "StepRange",
    "StepWindow",
    "UpToFraction",
    "SOURCE",
    "TARGET",
    "attention_processors",
]
