"""Split one inference batch over several one-thread workers.

On a few CPU cores, a mid-sized batch of small convolutions (EfficientNet-Lite0 at 224) runs
about 1.5x faster as one sub-batch per core with one intra-op thread each than as one batch
with the intra-op threads sharing every layer (measured by ``benchmarks/beam_speed.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch

__all__ = ["split_inference"]


@lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    # kept for the process: starting threads (and their OpenMP teams) per call costs ~5 ms
    return ThreadPoolExecutor(workers, thread_name_prefix="wsolkit-inference")


def split_inference(
    fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, workers: int | None = None
) -> torch.Tensor:
    """``fn(batch)`` without autograd, one sub-batch per worker thread.

    Only for callables whose hooks keep no state (e.g. :func:`wsolkit.maps.hooks.run_to_layer`):
    hooks that store state would race between the workers.
    Torch's intra-op thread count is set to one while the workers run and restored after.

    Args:
        fn: maps an (N, ...) batch to an (N, ...) output, row by row.
        batch: the input batch.
        workers: worker threads (default: torch's current intra-op thread count); with one
            worker, a one-row batch or a GPU tensor this is a plain call.
    """
    workers = torch.get_num_threads() if workers is None else workers
    if workers < 2 or batch.shape[0] < 2 or batch.device.type != "cpu":
        with torch.inference_mode():
            return fn(batch)
    chunks = batch.tensor_split(min(workers, batch.shape[0]))

    def run(chunk: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # grad mode is thread-local
            return fn(chunk)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.cat(list(_pool(len(chunks)).map(run, chunks)))
    finally:
        torch.set_num_threads(threads)
