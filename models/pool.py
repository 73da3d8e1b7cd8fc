"""Process pools for numpy work (synthesis, preparing training cases).

numpy's OpenBLAS starts a thread per core in every process, so `workers` processes on
N cores would run workers x N threads, most of them waiting for a core; the small matrix
products of synthesis gain nothing from them. Each process here uses one BLAS thread:
10 CT series with 2 workers on 2 cores took 34-35 s instead of 64-71 s.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from threadpoolctl import threadpool_limits


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes, each limited to one BLAS thread for its whole life."""
    return ProcessPoolExecutor(workers, initializer=threadpool_limits,
                               initargs=(1, "blas"))
