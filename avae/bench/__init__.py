"""The benchmark harness, apart from the library: the CPU benchmark (cpu, `avae bench`; what it measures
with, measure; its peers, peers), the GPU benchmark (gpu, `python -m avae.bench.gpu`; its checks,
gpu_checks; several configurations on one device, gpu_concurrency; its timing, gpu_timing) and the text
of BENCH.md and GPU_BENCH.md (report)."""
