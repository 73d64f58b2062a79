"""`mixweight` with float64 as torch's default dtype (models are then built and trained in float64).

Used by exactness tests that compare runs summing in different orders (one process or two, FSDP
or not): in float32, Adam turns that rounding into parameter differences that depend on the
machine's BLAS; in float64 they are ~1e-15 (see EXACT_ATOL in tests/test_train_weighting.py).

usage: [torchrun ...] float64_mixweight.py COMMAND [FLAGS...]   (the arguments of `mixweight`)
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's mixweight, whatever is installed

torch.set_default_dtype(torch.float64)

from mixweight.cli import main  # noqa: E402  (after the dtype: nothing may be built before it)

if __name__ == "__main__":
    main(sys.argv[1:])
