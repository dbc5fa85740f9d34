"""Speed and memory benchmarks (ratios measured in one run, never timed expectations in
tests): core kernels, cache, extraction memory, node copies, sweeps, scale, VTAB decode,
the demo's stages. May import: head2toe and orchestrator."""
