#!/usr/bin/env python
"""Trains the synthetic-tiny model (see aledit.synthetic.train and the model card).

    python scripts/train_synthetic.py --out src/aledit/models/synthetic-tiny
"""

import sys

from aledit.synthetic.train import main

if __name__ == "__main__":
    sys.exit(main())
