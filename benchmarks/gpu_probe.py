"""GPU experiments behind the design choices and the goal analysis in docs/benchmarks.md (one section per run).

    python3 benchmarks/gpu_probe.py graph      # one CUDA graph per shape vs torch.compile reduce-overhead
    python3 benchmarks/gpu_probe.py profile    # kernels per call and GPU busy time, default-mode compile, FP16
    python3 benchmarks/gpu_probe.py quant      # torchao INT8 dynamic / weight-only / FP8 rowwise on BERT-base
    python3 benchmarks/gpu_probe.py aoti       # AOTInductor CUDA package: build, then load in a fresh process
    python3 benchmarks/gpu_probe.py autotune   # torch.compile max-autotune at batch 1
    python3 benchmarks/gpu_probe.py candidates # named inferforge candidates, built and loaded by their backends
    python3 benchmarks/gpu_probe.py aoti_small # AOTInductor CUDA on a small MLP: which build/load ways crash

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
from gpu_suite import workload, gpu_time  # noqa

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
    from inferforge.source import load_source
    from inferforge.types import Precision

    spec, folder, index = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    lock = folder / "gpu.lock"
    name, backend_name, precision, opts = spec.split(":")
    backend = get_backend(backend_name)
    values = dict(kv.split("=") for kv in opts.split(",") if kv)
    values = {k: (v == "1") if k == "cuda_graphs" else v for k, v in values.items()}
    config = BuildConfig(backend_name, Precision(precision), "cuda", backend.options_type(**values))
    model, specs, make, task = workload(name)
    source = load_source(model, inputs=specs)
    res = {"key": config.key(), "unavailable": backend.unavailable_reason(config, source)}
    out_dir = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        artifact = backend.build(source, config, out_dir)
        res["build_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        runner = backend.load(artifact, source.spec, threads=4)
        for bs in (1, 256):  # compiles and captures outside the lock
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
        for bs in (1, 256):
            args = runner.to_native(make(bs, 2))
            ms = gpu_time(lambda: runner.run_native(args), 200 if bs == 1 else 20)
            res[f"bs{bs}_ms"] = round(ms, 4)
        res["bs256_per_s"] = round(256000 / res["bs256_ms"])
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


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1] == "one_candidate":
        section_one_candidate()
    else:
        globals()["section_" + sys.argv[1]]()
