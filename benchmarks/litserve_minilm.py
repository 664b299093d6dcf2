"""LitServe serving MiniLM, for benchmarks/serve_bench.py (run as its subprocess).

    .venv/bin/python benchmarks/litserve_minilm.py PACKAGE|pytorch PORT THREADS MAX_BATCH_SIZE BATCH_TIMEOUT_S STATS_FILE

PACKAGE: LitServe runs inferforge's own artifact (``inferforge.load``), which isolates the
serving layer. ``pytorch``: LitServe runs the model as a LitServe user writes it, the
PyTorch module (the demo's pretrained MiniLM with mean pooling) in FP32 under
``torch.inference_mode()``.

One sample per request, in LitServe's own JSON style: ``{"input_ids": [128 ints],
"attention_mask": [128 ints]}`` in, ``{"output": [384 floats]}`` out, at ``/predict``;
``/health`` answers 200 once the worker has loaded the package. Batching is LitServe's
(``max_batch_size``, ``batch_timeout``). After each batch, STATS_FILE holds
"<samples> <batches> <seconds in the model>", so the benchmark can report the mean batch size
LitServe formed and how long the model call took per batch.
This file is its own module because LitServe's workers are spawned processes that
re-import the class of the API they run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import litserve as ls
import numpy as np

OUTPUT = "output"


class InferforgeLitAPI(ls.LitAPI):
    def __init__(self, package: str, threads: int, stats: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.package, self.threads, self.stats = package, threads, stats

    def setup(self, device: str) -> None:
        if self.package == "pytorch":
            self.runner = plain_pytorch(self.threads)
            self.names = ["input_ids", "attention_mask"]
        else:
            import inferforge

            self.runner = inferforge.load(self.package, threads=self.threads)
            self.names = [spec.name for spec in self.runner.inputs]
        self.batches = self.samples = 0
        self.compute_s = 0.0
        self.stats_file = open(self.stats, "w")  # noqa: SIM115 - open for the worker's whole life

    # decode_request's `request` and encode_response's return stay unannotated: LitServe turns those
    # annotations into FastAPI's request and response types (unannotated: the raw request, plain JSON).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return {name: np.asarray(request[name], dtype=np.int64) for name in self.names}

    def batch(self, inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {name: np.stack([x[name] for x in inputs]) for name in self.names}

    def predict(self, x: dict[str, np.ndarray]) -> np.ndarray:
        started = time.perf_counter()
        output = self.runner(x)[OUTPUT]
        self.compute_s += time.perf_counter() - started
        self.batches += 1
        self.samples += len(output)
        self.stats_file.seek(0)
        self.stats_file.write(f"{self.samples} {self.batches} {self.compute_s:.6f}\n")
        self.stats_file.flush()
        return output

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray):  # type: ignore[no-untyped-def]
        return {OUTPUT: output.tolist()}


def plain_pytorch(threads: int) -> Any:
    """The demo's PyTorch module called the plain way: FP32, inference mode, numpy in and out."""
    import torch

    from inferforge.demo.minilm import make_model

    torch.set_num_threads(threads)
    model, _ = make_model()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
            return {OUTPUT: model(**tensors).numpy()}

    return run


def main(argv: list[str]) -> None:
    package, port, threads, max_batch, timeout, stats = argv
    api = InferforgeLitAPI(package, int(threads), stats, max_batch_size=int(max_batch), batch_timeout=float(timeout))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=int(port), num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
