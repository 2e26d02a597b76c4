"""Packed engine vs PyTorch fp32 and int8, in one run, with % of the measured peaks. Run on a
quiet machine:

    python benchmarks/engine_bench.py            # layers, epilogues, whole ReActNet-18 (MV) + int8 ResNet-18
    python benchmarks/engine_bench.py --quick    # a few shapes: checks that it runs
    python benchmarks/engine_bench.py --threads 1 --kernels v0 v1   # earlier vs current AVX2 kernels
    python benchmarks/engine_bench.py --json > engine.json

Same as ``bitvote bench --layers --model reactnet18``; see docs/engine.md.
"""

import sys

from bitvote.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["bench", "--layers", "--model", "reactnet18", *args]))
