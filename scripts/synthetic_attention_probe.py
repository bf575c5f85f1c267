#!/usr/bin/env python
"""Where does a model's cross-attention go on synthetic scenes, and do its captions re-colour?

Prints the figures of :mod:`aledit.synthetic.probe` (issue 15): the cross-attention mass on BOS,
the caption's words and EOS + padding; how strongly an object's words attend inside that
object's mask (and inside the other object's mask) relative to a uniform map (1.0 = no
localisation), at t = 800, 500, 200; and the share of an object's pixels re-coloured from pure
noise by a caption with another colour. With ``--json`` the last line is one JSON object with
``own_mask_ratio``, ``other_mask_ratio`` (t = 500), ``own_other_ratio``, ``bos_mass``,
``word_mass``, ``eos_mass``, ``recolour_success``, ``recolour_colour_share``, ``by_timestep``,
``caption_control`` (per noise level, the share of scenes whose one-step prediction takes the
caption's new colour), ``shape_control`` (per noise level, the mean IoU gain of the new shape
over the source's when the caption names another shape), ``shape_drawn`` (the share of
one-object captions generated from pure noise in the shape they name; chance 1/9), ``scenes``.

    python scripts/synthetic_attention_probe.py [MODEL_DIR] [--scenes 16] [--json]
"""

import argparse
import json
import logging
import sys

import torch

from aledit.synthetic.model import SYNTHETIC_TINY, is_saved_pipeline
from aledit.synthetic.probe import PROBE_KEYS, ProbeConfig, run_probe
from aledit.validation import check_number

logger = logging.getLogger("synthetic_attention_probe")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="synthetic-tiny", help="model folder or 'synthetic-tiny'")
    parser.add_argument("--scenes", type=int, default=ProbeConfig.scenes, help="scenes per figure (default 16)")
    parser.add_argument("--recolour-steps", type=int, default=ProbeConfig.recolour_steps)
    parser.add_argument("--recolour-guidance", type=float, default=ProbeConfig.recolour_guidance)
    parser.add_argument("--seed", type=int, default=ProbeConfig.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        check_number("threads", args.threads, 1, integer=True)
        config = ProbeConfig(
            scenes=args.scenes, recolour_steps=args.recolour_steps, recolour_guidance=args.recolour_guidance, seed=args.seed
        )
    except ValueError as e:
        parser.error(str(e))
    if args.model != SYNTHETIC_TINY and not is_saved_pipeline(args.model):
        parser.error(f"{args.model} is not a model folder (no model_index.json): give one written by train_synthetic.py, or 'synthetic-tiny'")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from aledit import ALEEditPipeline  # after the argument checks: loading takes seconds

    torch.set_num_threads(args.threads)
    pipe = ALEEditPipeline.from_pretrained(args.model)
    result = run_probe(pipe, config, progress=not args.no_progress)
    for t, f in result["by_timestep"].items():
        logger.info("t=%s: %s", t, {k: round(v, 3) for k, v in f.items()})
    logger.info("caption control (share of scenes re-coloured by the caption, per t): %s", result["caption_control"])
    logger.info("shape control (IoU(new shape) - IoU(source shape) of one-step predictions, per t): %s", {t: round(v, 3) for t, v in result["shape_control"].items()})
    logger.info("headline (t=%s, %d scenes): %s", result["probed_at"], result["scenes"], {k: round(result[k], 3) for k in PROBE_KEYS})
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
