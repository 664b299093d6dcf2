"""The run report and leaderboard in Markdown (report.md in every package)."""

from __future__ import annotations

from datetime import UTC, datetime

from inferforge.data import Dataset
from inferforge.environment import fingerprint
from inferforge.report.leaderboard import columns, leaderboard_rows
from inferforge.search import SearchResult


def markdown_leaderboard(result: SearchResult) -> str:
    cols = columns(result)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in leaderboard_rows(result)]
    return "\n".join(lines)


def report_markdown(result: SearchResult, dataset: Dataset, model_name: str) -> str:
    env = fingerprint()
    opts = result.options
    best = result.best
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    lines = [
        f"# inferforge report: {model_name}",
        "",
        f"- created: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- picked: **{best.key if best else 'none'}** (objective: {opts.objective.value})",
        f"- validation data: {dataset.origin}, {len(dataset)} samples, labels: {'yes' if dataset.labels is not None else 'no'}",
        f"- budget: {opts.budget.describe()}",
        f"- machine: {env['cpu']} ({env['cores']} cores usable, {env['machine']}), {env['system']}, Python {env['python']}",
        f"- threads: {opts.threads}; batch sizes: {', '.join(map(str, opts.bench.batch_sizes))}",
        *(f"- note: {note}" for note in result.notes),
        f"- libraries: {libs}",
        "",
        "## Leaderboard",
        "",
        markdown_leaderboard(result),
        "",
        "Latency is the median of timed runs at the smallest batch size after warm-up; cv is its coefficient of "
        "variation; throughput is samples/s at the median latency of the best batch size. Where the validation "
        "data pads a dynamic length, the data's samples at their own lengths decide (\"data\"), and the spec's "
        "example shape is shown beside them (\"spec\"). \"vs fastest\" is the leaders' re-measure in turns: the "
        "median ratio of each one's time to the fastest's with its 95% interval; an interval holding 1.00 and "
        "staying under 1.05 is a tie, which goes to the simpler artifact. Peak RSS is the rise in resident memory over load, validation "
        "and benchmark.",
        "",
    ]
    return "\n".join(lines)
