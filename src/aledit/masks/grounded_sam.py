"""Grounded-SAM: masks from a phrase, GroundingDINO boxes segmented by SAM (paper sec. 3.2, app. D).

:class:`GroundedSAM` is a :class:`~aledit.masks.MaskProvider`. For each phrase it

1. asks a :class:`Detector` for boxes (one phrase per query, so every box belongs to the phrase
   that was asked for: no label matching between phrases is needed),
2. keeps the boxes whose box score exceeds ``box_threshold`` and whose phrase-token score exceeds
   ``text_threshold`` (:func:`select_boxes`),
3. asks a :class:`Segmenter` for one mask per kept box (one call for all phrases, so SAM encodes
   the image once),
4. unions the masks of the phrase's boxes (two shoes are one "footwear") and dilates the union by
   ``dilation_ratio`` of the image's longer side (:func:`union_masks`).

Rules:

* **Failure is explicit.** A phrase with no box above the thresholds, or whose boxes SAM turns into
  an empty mask, raises :class:`ObjectNotFoundError` (a :class:`~aledit.masks.MaskError`) naming
  the phrase, the best score seen and what to do. An empty mask is never returned.
* **Overlaps are kept.** Masks of two phrases that overlap are returned as they are: both keep the
  shared pixels. Deciding who owns an overlap is the engine's job: RGB-CAM sends pixels covered by
  two or more objects to the base prompt (:func:`~aledit.masks.ops.exclusive_regions`).
* **Who dilates.** The pipeline already dilates every mask by ``ALEConfig.dilation_ratio`` (paper:
  0.01, 7 px at 768) in :meth:`~aledit.masks.ObjectMasks.from_sources`. So ``dilation_ratio``
  here defaults to 0.0 (SAM's raw masks); set it only when the masks are used outside the
  pipeline, or the two dilations add up.

Thresholds default to the authors' edit function (box 0.45, text 0.40) rather than the Grounded-SAM
demo's (0.35, 0.25): all boxes above the threshold are unioned, so a low threshold silently adds a
wrong object to the mask, while a high one fails loudly with the score to lower it to.

Scores (GroundingDINO, prompt ``"<phrase>."``): ``probs = sigmoid(logits)`` ``[Q, T]`` over the Q
queries and T text positions. A box's score is its best probability over all text positions (as
``post_process_grounded_object_detection`` and both reference implementations compute it); its
text score is its best probability over the phrase's own tokens (no ``[CLS]``, ``[SEP]``, ``.``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from .ops import MaskError, ObjectNotFoundError, dilate, dilation_radius

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_SEGMENTER",
    "Detections",
    "Detector",
    "GroundedSAM",
    "GroundingDinoDetector",
    "GroundingNotFoundError",
    "ObjectNotFoundError",
    "SamSegmenter",
    "Segmenter",
    "center_boxes_to_corners",
    "grounding_prompt",
    "grounding_scores",
    "select_boxes",
    "union_masks",
]

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam-vit-base"
DEFAULT_BOX_THRESHOLD = 0.45
DEFAULT_TEXT_THRESHOLD = 0.40


# -- errors -------------------------------------------------------------------------------------


class GroundingNotFoundError(ObjectNotFoundError):
    """One or more phrases that Grounded-SAM could not turn into a mask.

    Attributes:
        phrases: the phrases not found, in query order.
        best_scores: phrase -> best box score the detector gave (``None``: no box proposed).
        reasons: phrase -> why it failed, in words.
        phrase, best_score: those of the first phrase not found.
    """

    def __init__(self, reasons: dict[str, str], best_scores: dict[str, float | None]):
        self.reasons = dict(reasons)
        self.best_scores = {p: best_scores.get(p) for p in reasons}
        self.phrases = tuple(reasons)
        self.phrase = self.phrases[0]
        self.best_score = self.best_scores[self.phrase]
        lines = [f"Grounded-SAM could not find {p!r} in the image: {r}." for p, r in self.reasons.items()]
        lines.append(
            "To fix it: lower the box threshold (--box-threshold, box_threshold=...; or the text threshold "
            "when that is the one missed) below the best score, name the object differently (a plainer, "
            f"more common noun), or give its mask yourself (--mask '{self.phrase}=PATH')."
        )
        MaskError.__init__(self, "\n".join(lines))

    def __reduce__(self):  # keeps the error picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.reasons, self.best_scores))


# -- boxes and masks: pure pieces ---------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """Boxes a detector proposes for one phrase, with their confidences (not thresholded).

    Attributes:
        boxes: ``[K, 4]`` float, ``(x0, y0, x1, y1)`` in pixels of the image given to the detector.
        scores: ``[K]`` float in [0, 1], the box score compared with ``box_threshold``.
        text_scores: ``[K]`` float, the phrase-token score compared with ``text_threshold``;
            ``None`` when the detector has no separate text score (then ``scores`` is used).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    text_scores: torch.Tensor | None = None

    def __post_init__(self):
        k = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"detector boxes must be [K, 4] (x0, y0, x1, y1), got shape {tuple(self.boxes.shape)}")
        if tuple(self.scores.shape) != (k,):
            raise ValueError(f"detector scores must be [K] = [{k}], got shape {tuple(self.scores.shape)}")
        if self.text_scores is not None and tuple(self.text_scores.shape) != (k,):
            raise ValueError(f"detector text scores must be [K] = [{k}], got shape {tuple(self.text_scores.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def phrase_scores(self) -> torch.Tensor:
        """``[K]``: ``text_scores`` when the detector gives them, else ``scores``."""
        return self.scores if self.text_scores is None else self.text_scores

    def best_score(self) -> float | None:
        """Highest box score, ``None`` when no box was proposed."""
        return float(self.scores.max()) if len(self) else None


def select_boxes(detections: Detections, box_threshold: float, text_threshold: float) -> Detections:
    """Keeps the boxes with ``score > box_threshold`` and ``text score > text_threshold``.

    Returns:
        ``Detections`` with ``K' <= K`` boxes, in their original order.
    """
    keep = (detections.scores > box_threshold) & (detections.phrase_scores > text_threshold)
    text = None if detections.text_scores is None else detections.text_scores[keep]
    return Detections(detections.boxes[keep], detections.scores[keep], text)


def union_masks(masks: torch.Tensor, radius: int = 0) -> torch.Tensor:
    """Union of one phrase's per-box masks, dilated by a disk of ``radius`` pixels.

    Args:
        masks: ``[K, H, W]`` bool, one mask per box (``K`` may be 0).
        radius: dilation in pixels (see :func:`~aledit.masks.ops.dilation_radius`).

    Returns:
        ``[H, W]`` bool. Dilating the union equals the union of the dilated masks.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {tuple(masks.shape)}")
    return dilate(masks.bool().any(dim=0), radius)


def grounding_prompt(phrase: str) -> str:
    """GroundingDINO's text for one phrase: lower case, single spaces, ending with ``"."``.

    Dots inside the phrase become spaces: GroundingDINO reads ``"."`` as the end of a phrase.
    """
    text = " ".join(phrase.replace(".", " ").split()).lower()
    if not text:
        raise MaskError(f"cannot detect an empty phrase ({phrase!r}); name the object to find, e.g. 'cat'")
    return text + "."


def grounding_scores(probs: torch.Tensor, phrase_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box and text scores of GroundingDINO queries.

    Args:
        probs: ``[Q, T]`` sigmoid of the logits, queries x text positions.
        phrase_tokens: ``[T]`` bool, True at the positions of the phrase's own tokens.

    Returns:
        box_scores: ``[Q]``, best probability over all positions.
        text_scores: ``[Q]``, best probability over the phrase's tokens (0 when it has none).
    """
    box_scores = probs.max(dim=-1).values if probs.shape[-1] else probs.new_zeros(probs.shape[0])
    if not bool(phrase_tokens.any()):
        return box_scores, probs.new_zeros(probs.shape[0])
    return box_scores, probs[:, phrase_tokens].max(dim=-1).values


def center_boxes_to_corners(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[Q, 4]`` normalised ``(cx, cy, w, h)`` -> ``[Q, 4]`` pixel ``(x0, y0, x1, y1)``, clipped.

    ``size`` is the image's ``(width, height)``.
    """
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    width, height = size
    scale = corners.new_tensor([width, height, width, height])
    return torch.minimum(corners.clamp(min=0) * scale, scale)


# -- the two model roles ------------------------------------------------------------------------


@runtime_checkable
class Detector(Protocol):
    """Open-vocabulary detector: all boxes it proposes for one phrase, with their scores.

    ``__call__(image, phrase) -> Detections`` with ``boxes`` ``[K, 4]`` xyxy pixels and
    ``scores`` ``[K]``, not thresholded (the caller thresholds, and reports the best score when
    nothing passes). May define ``cache_key() -> dict`` (its model and settings).
    """

    def __call__(self, image: Image.Image, phrase: str) -> Detections: ...


@runtime_checkable
class Segmenter(Protocol):
    """Box-prompted segmenter: one mask per box.

    ``__call__(image, boxes)`` with ``boxes`` ``[K, 4]`` xyxy pixels returns ``[K, H, W]`` bool at
    the image's resolution (``K`` may be 0). May define ``cache_key() -> dict``.
    """

    def __call__(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor: ...


def _model_key(model) -> dict[str, Any]:
    config = model.config
    return {
        "model": getattr(config, "_name_or_path", "") or None,
        "revision": getattr(config, "_commit_hash", None),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def _component_key(component) -> dict[str, Any]:
    if hasattr(component, "cache_key"):
        return dict(component.cache_key())
    return {"class": f"{type(component).__module__}.{type(component).__qualname__}"}


class GroundingDinoDetector:
    """:class:`Detector` backed by transformers' ``GroundingDinoForObjectDetection``.

    Args:
        model: a ``GroundingDinoForObjectDetection`` (in eval mode, on its device).
        processor: its ``GroundingDinoProcessor`` (image processor + BERT tokenizer).
    """

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        tokenizer = processor.tokenizer
        ignore = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        for token in (".", "?"):  # GroundingDINO's phrase delimiters
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ignore.add(token_id)
        self._ignore_ids = torch.tensor(sorted(i for i in ignore if i is not None), dtype=torch.long)

    def cache_key(self) -> dict[str, Any]:
        return {"kind": "grounding-dino", **_model_key(self.model)}

    @torch.no_grad()
    def __call__(self, image: Image.Image, phrase: str) -> Detections:
        inputs = self.processor(images=image.convert("RGB"), text=grounding_prompt(phrase), return_tensors="pt")
        inputs = {k: _to_model(v, self.model) for k, v in inputs.items()}
        outputs = self.model(**inputs)
        probs = outputs.logits[0].float().sigmoid().cpu()  # [Q, T]
        input_ids = inputs["input_ids"][0].cpu()[: probs.shape[-1]]
        phrase_tokens = torch.zeros(probs.shape[-1], dtype=torch.bool)
        phrase_tokens[: input_ids.shape[0]] = ~torch.isin(input_ids, self._ignore_ids)
        box_scores, text_scores = grounding_scores(probs, phrase_tokens)
        boxes = center_boxes_to_corners(outputs.pred_boxes[0].float().cpu(), image.size)
        return Detections(boxes, box_scores, text_scores)


class SamSegmenter:
    """:class:`Segmenter` backed by transformers' ``SamModel``: one mask per box.

    The image is encoded once per call; boxes go through the mask decoder ``boxes_per_batch`` at a
    time, single-mask output (as in Grounded-SAM), logits > 0 after resizing to the image.

    Args:
        model: a ``SamModel`` (in eval mode, on its device).
        processor: its ``SamProcessor``.
    """

    def __init__(self, model, processor, boxes_per_batch: int = 32):
        if boxes_per_batch < 1:
            raise ValueError(f"boxes_per_batch must be >= 1, got {boxes_per_batch}")
        self.model = model
        self.processor = processor
        self.boxes_per_batch = boxes_per_batch

    def cache_key(self) -> dict[str, Any]:
        return {"kind": "sam", **_model_key(self.model)}

    @torch.no_grad()
    def __call__(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor:
        width, height = image.size
        if boxes.shape[0] == 0:
            return torch.zeros(0, height, width, dtype=torch.bool)
        inputs = self.processor(images=image.convert("RGB"), input_boxes=[boxes.tolist()], return_tensors="pt")
        embeddings = self.model.get_image_embeddings(_to_model(inputs["pixel_values"], self.model))
        out = []
        for chunk in _to_model(inputs["input_boxes"], self.model).split(self.boxes_per_batch, dim=1):
            pred = self.model(image_embeddings=embeddings, input_boxes=chunk, multimask_output=False).pred_masks
            masks = self.processor.post_process_masks(
                [pred[0].float().cpu()], inputs["original_sizes"], inputs["reshaped_input_sizes"]
            )[0]  # [k, 1, H, W] bool
            out.append(masks[:, 0].bool())
        return torch.cat(out)


def _to_model(value, model):
    """Moves a processor output to the model's device; floating tensors also to its dtype."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(device=model.device, dtype=model.dtype)
    return value.to(model.device)


# -- the provider -------------------------------------------------------------------------------


class GroundedSAM:
    """:class:`~aledit.masks.MaskProvider`: one mask per phrase from a detector and a segmenter.

    Build it with :meth:`from_pretrained` (hub ids or local folders), :meth:`from_models`
    (transformers models and processors already built) or directly from any :class:`Detector`
    and :class:`Segmenter`.

    Args:
        detector: proposes boxes for a phrase.
        segmenter: turns boxes into masks.
        box_threshold: a box is kept when its score is above this (authors' code: 0.45).
        text_threshold: ... and its phrase-token score is above this (authors' code: 0.40).
        dilation_ratio: dilation of each phrase's mask, as a ratio of the image's longer side.
            Default 0: the pipeline dilates by ``ALEConfig.dilation_ratio`` itself.
    """

    def __init__(
        self,
        detector: Detector,
        segmenter: Segmenter,
        *,
        box_threshold: float = DEFAULT_BOX_THRESHOLD,
        text_threshold: float = DEFAULT_TEXT_THRESHOLD,
        dilation_ratio: float = 0.0,
    ):
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0 (a detector score, e.g. 0.35), got {value!r}")
        dilation_radius(dilation_ratio, (1, 1))  # validates the ratio
        self.detector = detector
        self.segmenter = segmenter
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.dilation_ratio = float(dilation_ratio)

    @classmethod
    def from_models(cls, detector_model, detector_processor, segmenter_model, segmenter_processor, **options):
        """From transformers objects: ``GroundingDinoForObjectDetection`` + its processor and
        ``SamModel`` + ``SamProcessor``. ``options`` are those of the constructor."""
        return cls(
            GroundingDinoDetector(detector_model.eval(), detector_processor),
            SamSegmenter(segmenter_model.eval(), segmenter_processor),
            **options,
        )

    @classmethod
    def from_pretrained(
        cls,
        detector: str = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        **options,
    ) -> GroundedSAM:
        """Loads GroundingDINO and SAM from hub ids or local folders.

        Args:
            detector: GroundingDINO checkpoint (default ``IDEA-Research/grounding-dino-tiny``).
            segmenter: SAM checkpoint (default ``facebook/sam-vit-base``).
            device: where the models run (default: ``"cuda"`` when available, else ``"cpu"``).
            dtype: optional model dtype (e.g. ``torch.float16`` on a GPU).
            local_files_only: never reach the network (use the local cache or folders).
            options: ``box_threshold``, ``text_threshold``, ``dilation_ratio``.
        """
        from transformers import (
            AutoProcessor,
            GroundingDinoForObjectDetection,
            SamModel,
            SamProcessor,
        )

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        det_model = _load(GroundingDinoForObjectDetection, detector, "GroundingDINO detector", "detector", local_files_only)
        det_processor = _load(AutoProcessor, detector, "GroundingDINO processor", "detector", local_files_only)
        seg_model = _load(SamModel, segmenter, "SAM segmenter", "segmenter", local_files_only)
        seg_processor = _load(SamProcessor, segmenter, "SAM processor", "segmenter", local_files_only)
        det_model = det_model.to(device=device, dtype=dtype)
        seg_model = seg_model.to(device=device, dtype=dtype)
        logger.info("Grounded-SAM: detector %s, segmenter %s on %s", detector, segmenter, device)
        return cls.from_models(det_model, det_processor, seg_model, seg_processor, **options)

    def cache_key(self) -> dict[str, Any]:
        """Everything that changes the masks, as JSON values (for :class:`~aledit.masks.cache.CachedMaskProvider`)."""
        return {
            "provider": "grounded-sam",
            "detector": _component_key(self.detector),
            "segmenter": _component_key(self.segmenter),
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "dilation_ratio": self.dilation_ratio,
        }

    def detect(self, image: Image.Image, phrase: str) -> Detections:
        """The boxes kept for one phrase (may be empty; :meth:`__call__` raises then)."""
        return select_boxes(self.detector(image, phrase), self.box_threshold, self.text_threshold)

    def __call__(self, image: Image.Image, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """One mask per phrase.

        Args:
            image: the source image, any mode and size ``(W, H)``.
            phrases: objects to find, e.g. ``["cat", "red shoe"]`` (duplicates are found once).

        Returns:
            ``{phrase: [H, W] bool}``, every mask non-empty; masks may overlap.

        Raises:
            ObjectNotFoundError: for every phrase without a box above the thresholds or whose
                boxes segment to nothing, all named in one error.
        """
        # 1. check inputs
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL.Image, got {type(image).__name__}")
        if isinstance(phrases, str):
            raise TypeError(f"phrases must be a list of strings, got the string {phrases!r}; wrap it: [{phrases!r}]")
        phrases = list(dict.fromkeys(phrases))
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise MaskError(f"phrases must be non-empty strings naming objects, got {phrase!r}")
        rgb = image.convert("RGB")

        # 2. detect, one phrase at a time
        kept: dict[str, Detections] = {}
        best: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for phrase in phrases:
            proposals = self.detector(rgb, phrase)
            kept[phrase] = select_boxes(proposals, self.box_threshold, self.text_threshold)
            best[phrase] = proposals.best_score()
            if len(kept[phrase]) == 0:
                reasons[phrase] = self._why_no_box(proposals)
            else:
                logger.info("Grounded-SAM: %r -> %d box(es), best score %.3f", phrase, len(kept[phrase]), best[phrase])
        if reasons:
            raise GroundingNotFoundError(reasons, best)

        # 3. segment every kept box at once
        boxes = torch.cat([kept[p].boxes for p in phrases]).float()
        masks = self.segmenter(rgb, boxes)
        expected = (boxes.shape[0], image.size[1], image.size[0])
        if tuple(masks.shape) != expected:
            raise MaskError(
                f"segmenter {type(self.segmenter).__name__} returned masks of shape {tuple(masks.shape)}, "
                f"expected [K, H, W] = {list(expected)} (one mask per box at the image's resolution)"
            )

        # 4. union per phrase, dilate, refuse empty masks
        radius = dilation_radius(self.dilation_ratio, image.size)
        out: dict[str, torch.Tensor] = {}
        for phrase, phrase_masks in zip(phrases, masks.split([len(kept[p]) for p in phrases])):
            out[phrase] = union_masks(phrase_masks, radius)
            if not bool(out[phrase].any()):
                reasons[phrase] = (
                    f"the detector found {len(kept[phrase])} box(es) (best score {best[phrase]:.3f}) "
                    "but the segmenter returned an empty mask for each"
                )
        if reasons:
            raise GroundingNotFoundError(reasons, best)
        return out

    def _why_no_box(self, proposals: Detections) -> str:
        if len(proposals) == 0:
            return "the detector proposed no box at all"
        best = proposals.best_score()
        passing = proposals.scores > self.box_threshold
        if not bool(passing.any()):
            return f"the best box score was {best:.3f}, not above the box threshold {self.box_threshold:g}"
        best_text = float(proposals.phrase_scores[passing].max())
        return (
            f"boxes scored up to {best:.3f} (box threshold {self.box_threshold:g}) but their best score "
            f"on the phrase's own words was {best_text:.3f}, not above the text threshold {self.text_threshold:g}"
        )


def _load(loader, source: str, what: str, argument: str, local_files_only: bool):
    try:
        return loader.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise OSError(
            f"could not load the {what} from {source!r}: {exc}\n"
            f"Download it once where the hub is reachable (it is then cached), or pass a local folder "
            f"saved with save_pretrained: GroundedSAM.from_pretrained({argument}='/path/to/folder')."
        ) from exc
