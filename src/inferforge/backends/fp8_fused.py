"""fp8-static's program with each "FP8 product, GELU, quantize" run as one Triton kernel.

In ``fp8-static`` (``fp8_static.py``) a transformer's first feed-forward product is cuBLAS's FP8 GEMM
writing BF16, and GELU plus the quantization of the second product's input is a separate pass that reads
that BF16 tensor and writes it again in FP8: on BERT-base at batch 256 that pass cost 2.16 of 10.41 ms
(docs/benchmarks.md, GPU section). Here the same saved program is loaded, and before Inductor compiles it
each chain

    _scaled_mm(x8, W8^T, scale_x, scale_w, bias) -> [reshape] -> gelu -> [reshape] -> [to float32]
        -> * (1 / scale_next) -> clamp(-448, 448) -> to float8_e4m3fn

whose intermediate results nothing else reads is replaced by one call of ``inferforge::fp8_gemm_gelu_fp8``:
a Triton FP8 GEMM (wgmma on Hopper) whose epilogue scales, adds the bias, applies GELU (erf or tanh, as the
graph says), scales for the next product, saturates and casts. The FP8 intermediate is written once, one
byte an element, and the BF16 one never. The artifact is fp8-static's, unchanged (a plain torch.export
program); only load differs, so a package built on a host without Triton still loads as fp8-static would.

The kernel's tile sizes are fixed per problem size (``_tiles``), not autotuned at load: an autotuning
benchmark must not run while a CUDA graph is being captured. Measured (docs/benchmarks.md, GPU section):
on BERT-base at batch 256 the 12 fused kernels take 3.59 ms where cuBLAS's product and the pass took 3.85,
so the kernel's GEMM runs slower than cuBLAS's and wins only by the pass it removes.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from inferforge.backends.base import PROGRAM, Artifact, BuildConfig, Runner
from inferforge.backends.fp8_static import E4M3_MAX, Fp8StaticBackend, Fp8StaticOptions
from inferforge.backends.inductor import InductorOptions, compile_module, graphed_runner
from inferforge.backends.torch_common import load_program, set_torch_threads
from inferforge.data import Dataset
from inferforge.source import ModelSource
from inferforge.types import ModelSpec, Precision

FUSED_OP = "inferforge::fp8_gemm_gelu_fp8"


class Fp8FusedBackend(Fp8StaticBackend):
    name = "fp8-fused"
    packages = ("torch", "triton")

    def configs(self, device: str) -> list[BuildConfig]:
        if device != "cuda":
            return []
        return [BuildConfig(self.name, Precision.FP8, device, Fp8StaticOptions())]

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        """fp8-static's reasons; then per-tensor weight scales (the kernel takes one scale per matrix)."""
        reason = super().unavailable_reason(config, source)
        if reason:
            return reason
        if Fp8StaticOptions.of(config).weight_scale != "tensor":
            return ("fp8-fused's kernel takes one weight scale per matrix (weight_scale 'tensor'), "
                    "not one per channel")
        return None

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        """fp8-static's build; the details also count the chains load will fuse (BuildError when none: the
        candidate would be fp8-static again)."""
        import torch

        from inferforge.errors import BuildError

        artifact = super().build(source, config, out_dir, calibration=calibration)
        module = torch.export.load(str(out_dir / PROGRAM)).module()
        fused = fuse_gelu_quantize(module)
        if not fused:
            raise BuildError("fp8-fused found no FP8 product followed by GELU and a quantization in the "
                             "exported program: it would run as fp8-static does; use fp8-static")
        return dataclasses.replace(artifact, details={
            **artifact.details, "fused_gemm_gelu_quantize": fused,
            "format": "torch.export (FP8 linear layers as torch._scaled_mm); at load, each GEMM + GELU + "
                      "quantize chain runs as one Triton kernel"})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        set_torch_threads(threads)
        module = load_program(artifact.directory / PROGRAM, "cuda")
        fuse_gelu_quantize(module)
        mode = Fp8StaticOptions.of(artifact.config).compile_mode
        return graphed_runner(spec, artifact, compile_module(module, InductorOptions(mode=mode), "cuda"))


_RESHAPES = ("reshape.default", "view.default", "_unsafe_view.default")


def _is(node: Any, *names: str) -> bool:
    return node.op == "call_function" and any(str(node.target).removeprefix("aten.") == n for n in names)


_CHECKS = ("_assert_tensor_metadata.default",)  # export's dtype/device assertions: they read, and compute nothing


def _only_user(node: Any) -> Any | None:
    users = [u for u in node.users if not _is(u, *_CHECKS)]
    return users[0] if len(users) == 1 else None


def _through_reshapes(node: Any) -> Any | None:
    """The one consumer of ``node`` past any reshapes that keep the last dimension; None where it branches."""
    user = _only_user(node)
    while user is not None and _is(user, *_RESHAPES):
        user = _only_user(user)
    return user


def fuse_gelu_quantize(module: Any) -> int:
    """Replace, in ``module`` (a torch.export program's GraphModule), each chain the module docstring shows by
    one call of FUSED_OP; returns how many. A chain whose intermediates something else reads stays."""
    import torch

    _fused_op()
    op = torch.ops.inferforge.fp8_gemm_gelu_fp8
    graph = module.graph
    fused = 0
    for product in list(graph.nodes):
        if not _is(product, "_scaled_mm.default") or any(arg is not None for arg in product.args[5:6]):
            continue  # (args[5] is scale_result: only products with an unscaled output are taken)
        a, b, scale_a, scale_b = product.args[:4]
        bias = product.kwargs.get("bias", product.args[4] if len(product.args) > 4 else None)
        gelu = _through_reshapes(product)
        if gelu is None or not _is(gelu, "gelu.default"):
            continue
        step = _through_reshapes(gelu)
        if step is not None and _is(step, "to.dtype", "_to_copy.default") and _only_user(step) is not None \
                and _dtype_of(step) == torch.float32:
            step = _only_user(step)
        if step is None or not _is(step, "mul.Tensor") or len(step.args) != 2:
            continue
        inv_scale = step.args[1]
        clamp = _only_user(step)
        if clamp is None or not _is(clamp, "clamp.default") or list(clamp.args[1:3]) != [-E4M3_MAX, E4M3_MAX]:
            continue
        cast = _only_user(clamp)
        if cast is None or not _is(cast, "to.dtype", "_to_copy.default") \
                or _dtype_of(cast) != torch.float8_e4m3fn:
            continue
        approximate = gelu.kwargs.get("approximate", gelu.args[1] if len(gelu.args) > 1 else "none")
        with graph.inserting_before(cast):
            replacement = graph.call_function(op.default, (a, b, scale_a, scale_b, bias, inv_scale,
                                                           approximate == "tanh"))
        cast.replace_all_uses_with(replacement)
        node = clamp
        while node is not product:  # the chain's assertions would keep it alive: they go with it
            for check in [u for u in node.users if _is(u, *_CHECKS)]:
                graph.erase_node(check)
            node = node.args[0]
        for check in [u for u in product.users if _is(u, *_CHECKS)]:
            graph.erase_node(check)
        fused += 1
    graph.eliminate_dead_code()
    module.recompile()
    return fused


def _dtype_of(node: Any) -> Any:
    if "dtype" in node.kwargs:
        return node.kwargs["dtype"]
    return node.args[1] if len(node.args) > 1 else None


def _tiles(rows: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) for a product of ``rows`` rows: wide tiles for throughput
    batches, small ones where wide tiles would leave most of the 132 multiprocessors idle. Chosen with
    ``benchmarks/gpu_probe.py fp8_epilogue`` (docs/benchmarks.md): at 32768 x 768 -> 3072 the tile shapes
    tried were within 10% of each other, except 128x128 tiles on 4 warps (twice as slow)."""
    if rows <= 512:
        return 64, 64, 128, 4, 4
    return 128, 256, 128, 8, 3


@functools.cache
def _fused_op() -> Any:
    """FUSED_OP, defined on first use (importing this module imports neither torch nor Triton)."""
    import torch
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    @triton.jit
    def _epilogue(acc, offs_n, cols, scale_a_ptr, scale_b_ptr, bias_ptr, inv_scale_ptr,
                  HAS_BIAS: tl.constexpr, TANH: tl.constexpr):
        acc = acc * (tl.load(scale_a_ptr) * tl.load(scale_b_ptr))
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < cols, other=0.0).to(tl.float32)[None, :]
        if TANH:
            inner_ = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = 0.5 * acc * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner_)) - 1.0))
        else:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        return tl.clamp(acc * tl.load(inv_scale_ptr), -448.0, 448.0).to(tl.float8e4nv)

    @triton.jit
    def kernel(a_desc, w_desc, out_desc, scale_a_ptr, scale_b_ptr, bias_ptr, inv_scale_ptr, rows, cols, inner,
               HAS_BIAS: tl.constexpr, TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr) -> None:
        """Persistent: PROGRAMS programs walk the output tiles (the loop over tiles and the one over K
        pipelined as one); tiles come in and go out by TMA (the copy engine), which also zero-fills and
        clips the edges; W is read as stored, (cols, inner) row-major, and fed to the dot K-major."""
        tiles_m, tiles_n = tl.cdiv(rows, BLOCK_M), tl.cdiv(cols, BLOCK_N)
        steps = tl.cdiv(inner, BLOCK_K)
        group = GROUP_M * tiles_n  # GROUP_M row tiles side by side share their W tiles in L2
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True):
            first_m = (tile // group) * GROUP_M
            group_rows = min(tiles_m - first_m, GROUP_M)
            pid_m = first_m + (tile % group) % group_rows
            pid_n = (tile % group) // group_rows
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(steps):
                a = a_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
                w = w_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
                acc = tl.dot(a, w.T, acc)
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N],
                           _epilogue(acc, offs_n, cols, scale_a_ptr, scale_b_ptr, bias_ptr, inv_scale_ptr,
                                     HAS_BIAS, TANH))

    processors = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count

    # The schema is written out: this module's postponed annotations are strings, which torch cannot read.
    @torch.library.custom_op(FUSED_OP, mutates_args=(), schema="(Tensor a, Tensor b, Tensor scale_a, "
                             "Tensor scale_b, Tensor? bias, Tensor inv_scale, bool tanh) -> Tensor")
    def fp8_gemm_gelu_fp8(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                          bias: torch.Tensor | None, inv_scale: torch.Tensor, tanh: bool) -> torch.Tensor:
        """e4m3 (rows, cols) = clamp(gelu(a @ b * scale_a * scale_b + bias) * inv_scale, +-448): a e4m3
        (rows, inner), b e4m3 (inner, cols) (a transposed row-major weight, as ``_scaled_mm`` takes it),
        one-element FP32 scales, bias (cols,) or None; inner and cols multiples of 16 (TMA's alignment)."""
        rows, inner = a.shape
        cols = b.shape[1]
        a, weight = a.contiguous(), b.t().contiguous()  # no copies for what fp8-static's graph passes
        out = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=a.device)
        block_m, block_n, block_k, warps, stages = _tiles(rows)
        programs = min(processors, triton.cdiv(rows, block_m) * triton.cdiv(cols, block_n))
        kernel[(programs,)](
            TensorDescriptor.from_tensor(a, [block_m, block_k]),
            TensorDescriptor.from_tensor(weight, [block_n, block_k]),
            TensorDescriptor.from_tensor(out, [block_m, block_n]),
            scale_a, scale_b, bias if bias is not None else scale_a, inv_scale, rows, cols, inner,
            HAS_BIAS=bias is not None, TANH=tanh, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            GROUP_M=8, PROGRAMS=programs, num_warps=warps, num_stages=stages)
        return out

    @fp8_gemm_gelu_fp8.register_fake
    def _(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
          bias: torch.Tensor | None, inv_scale: torch.Tensor, tanh: bool) -> torch.Tensor:
        return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.float8_e4m3fn)

    return fp8_gemm_gelu_fp8
