"""Benchmark: the full soak (120 s, 50 clients, a random fault every ~10 s), niced.

Usage: python bench/soak.py [extra `shardtwin soak` flags]   (exit code = the soak's)
Equivalent to: nice -n 15 shardtwin soak --json ...
"""

import os
import sys

if __name__ == "__main__":
    os.nice(15)   # other work on this host (calibration) keeps priority
    from experiments.cli import main
    sys.exit(main(["soak", *(sys.argv[1:] or ["--json"])]))
