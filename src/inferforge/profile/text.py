"""``inferforge profile``'s terminal view of a ProfileReport."""

from __future__ import annotations

from inferforge.profile.report import ProfileReport


def format_report(report: ProfileReport) -> str:
    s, ops, r = report.stages, report.operators, report.roofline
    lines = [f"{report.package}: {report.artifact} ({report.backend}, {report.precision}, {report.device}, "
             f"{report.threads} threads), batch {report.batch_size}, {s.runs} runs", "",
             f"{'stage':<18}{'median ms':>12}{'share':>9}"]
    lines += [f"{t.name:<18}{t.median_ms:>12.4f}{t.share:>9.1%}" for t in s.stages]
    lines += [f"{'sum of stages':<18}{s.stage_sum_ms:>12.4f}",
              f"{'whole call':<18}{s.whole_call_median_ms:>12.4f}   (sum / whole = {s.sum_to_whole:.3f})"]
    if not 0.9 <= s.sum_to_whole <= 1.1:
        lines.append("  the stages and whole calls disagree by more than 10%: latencies were noisy or bimodal (a busy "
                     "machine, more threads than free cores); rerun with more --runs or fewer --threads")
    lines.append("")
    if ops.unavailable:
        lines.append(f"operators: unavailable: {ops.unavailable}")
    else:
        lines.append(f"top operators ({ops.profiler}, {ops.time_kind}, per run over {ops.profiled_runs} runs):")
        lines += [f"  {o.name[:48]:<48}{o.self_ms_per_run:>10.4f} ms{o.share:>8.1%}  x{o.calls_per_run:g}"
                  for o in ops.operators]
    if ops.trace_path:
        lines.append(f"chrome trace: {ops.trace_path}")
    flops = "unknown" if r.flops_per_call is None else f"{r.flops_per_call:,}"
    lines += ["", f"roofline (compute stage {r.time_basis_ms:.4f} ms):", f"  FLOPs per call: {flops} ({r.flops_source})",
              f"  bytes per call: {r.bytes_per_call:,} ({r.bytes_counted})",
              f"  measured peaks: {_si(r.peak.matmul_flops_per_s[r.peak_dtype], 'FLOP/s')} {r.peak_dtype} matmul, "
              f"{_si(r.peak.copy_bytes_per_s, 'B/s')} copy ({r.peak.threads} threads)"]
    if r.achieved_flops_per_s is not None and r.fraction_of_peak_flops is not None:
        lines.append(f"  achieved: {_si(r.achieved_flops_per_s, 'FLOP/s')} ({r.fraction_of_peak_flops:.2%} of peak)")
    lines.append(f"  achieved: {_si(r.achieved_bytes_per_s, 'B/s')} ({r.fraction_of_peak_bandwidth:.2%} of peak)")
    if r.arithmetic_intensity is not None:
        lines.append(f"  arithmetic intensity {r.arithmetic_intensity:.2f} FLOP/B, ridge {r.ridge_intensity:.2f}: "
                     f"{r.bound}-bound")
    return "\n".join(lines)


def _si(value: float, unit: str) -> str:
    """3 significant digits with an SI prefix: 1.23 GFLOP/s, 456 MB/s."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
