"""Benchmark the fused label-smoothing cross-entropy (the implementation lives in ``hf_calib.recipes.bench``).

Same as ``hf-calib bench``; see ``python benchmarks/bench_fused_ce.py --help`` and docs/benchmarks.md.
"""

from hf_calib.recipes.bench import main

if __name__ == "__main__":
    main()
