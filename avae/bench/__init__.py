"""The benchmark harness, apart from the library: the CPU benchmark (cpu, `avae bench`), the GPU
benchmark (gpu, `python -m avae.bench.gpu`) and the text of BENCH.md and GPU_BENCH.md (report)."""
