"""Text tables for the terminal and BENCHMARKS.md from the stored benchmark results."""

from __future__ import annotations

from typing import Any

ORDER = ("loop", "speed", "quality", "sampling", "reruns", "ablations", "seeds", "transfer_sources", "adaptive",
         "scaling", "class_weights", "vocabulary", "hidden", "kd_weight", "steps", "selection", "attention",
         "vocabulary_cap", "teacher_epochs", "teacher_context")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (cells as given; '|' escaped)."""
    def cell(value: Any) -> str:
        return "–" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plain_table(columns: list[str], rows: list[list[Any]]) -> str:
    """An aligned plain-text table for the terminal."""
    cells = [columns] + [["–" if value is None else str(value) for value in row] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
                     for line in cells) + "\n"


def target_line(entry: dict[str, Any]) -> str:
    """'meets'/'MISSES' a target, with the value, the threshold and the margin."""
    verdict = "meets" if entry["meets"] else "**misses**"
    unit = entry.get("unit", "")
    return (f"- {entry['name']}: {entry['value']:.3g}{unit} {entry['operator']} {entry['threshold']:.3g}{unit} — "
            f"{verdict} (margin {entry['margin']:+.3g}{unit})")


def render_result(result: dict[str, Any], markdown: bool = True) -> str:
    """One benchmark's section: title, tables, targets, notes."""
    table = markdown_table if markdown else plain_table
    parts = [f"## {result['title']}\n" if markdown else f"== {result['title']} ==\n"]
    if result.get("skipped"):
        parts.append(f"Skipped: {result['skipped']}\n")
    for entry in result.get("tables", []):
        parts.append(f"**{entry['title']}**\n" if markdown else entry["title"])
        parts.append(table(entry["columns"], entry["rows"]))
    if result.get("targets"):
        parts.append("Targets:\n" if markdown else "Targets:")
        parts.append("\n".join(target_line(entry) for entry in result["targets"]) + "\n")
    if result.get("notes"):
        parts.append("\n".join(f"- {note}" for note in result["notes"]) + "\n")
    machine = f" on {result['machine']['cpu_model']}" if result.get("machine") else ""
    footer = (f"Mode: {result.get('mode', '?')}; command `{result.get('command', '?')}`; finished "
              f"{result.get('finished', '?')}{machine} after {result.get('seconds', 0):.0f} s.")
    parts.append(f"\n_{footer}_\n" if markdown else footer + "\n")
    return "\n".join(parts)


def render_benchmarks(results: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """The whole BENCHMARKS.md: machine, command, a targets overview, then each benchmark's section."""
    ordered = sorted(results, key=lambda result: ORDER.index(result["name"]) if result["name"] in ORDER else 99)
    overview = [[result["title"], f"{entry['name']} {entry['operator']} {entry['threshold']:.3g}{entry['unit']}",
                 f"{entry['value']:.3g}{entry['unit']}", "meets" if entry["meets"] else "**misses**",
                 f"{entry['margin']:+.3g}{entry['unit']}"]
                for result in ordered for entry in result.get("targets", [])]
    head = [
        "# Benchmarks\n",
        "Every benchmark runs its contenders side by side in one process (interleaved, order rotated each repeat) "
        "and reports ratios as the median of the repeats with (min–max). Absolute times drift on shared machines; "
        "ratios are the figures to compare.\n",
        f"- Machine of the last run (each section names its own): {machine['cpu_model']}, {machine['cores']} cores, "
        f"torch threads {machine['torch_threads']}, "
        f"1-min load average at the start {machine['load_average_1m']}",
        f"- Software: Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}",
        f"- Command: `{command}`\n",
        "## Targets\n",
        markdown_table(["benchmark", "target", "measured", "result", "margin"], overview) if overview
        else "No targets measured.\n",
    ]
    return "\n".join(head) + "\n" + "\n".join(render_result(result) for result in ordered)
