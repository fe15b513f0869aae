"""Turns a pytest-benchmark JSON file into markdown tables of same-run ratios, one section per
benchmark file (bench_<kernel>.py -> section <kernel>).

    python benchmarks/report.py build/bench.json                          # print the tables
    python benchmarks/report.py build/bench.json --out docs/BENCHMARKS.md # update the doc
    python benchmarks/report.py a.json b.json --out docs/BENCHMARKS.md    # several runs, in order

With --out, each section's tables replace the block between `<!-- report:SECTION:begin -->` and
`<!-- report:SECTION:end -->` in that file (appended at the end if absent); sections the JSON does
not cover keep their current tables. Each group's ratio column is time(provider) / time(tna): how
many times faster ours is. Bandwidth is bytes / median time."""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


def section_of(bench: dict) -> str:
    """`benchmarks/bench_lif.py::test_x[...]` -> `lif`."""
    match = re.search(r"bench_(\w+)\.py", bench.get("fullname", ""))
    return match.group(1) if match else "other"


def machine_line(data: dict) -> str:
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    tuned = "glibc thresholds raised (tuned)" if machine.get("tuned_malloc") else "default allocator"
    return (f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs; popcount kernels: "
            f"{machine.get('tna_ternary_isa', '?')}; torch {machine.get('torch', '?')}; {tuned}; "
            f"run {data.get('datetime', '?')}")


def group_tables(rows: list[dict], ours: str = "tna") -> list[str]:
    groups = defaultdict(list)
    for b in rows:
        groups[b["group"]].append(b)
    lines = []
    for group, members in groups.items():
        by = {r["extra_info"].get("provider", r["name"]): r for r in members}
        base = by.get(ours) or next((v for k, v in by.items() if k.startswith(ours)), None)
        lines += [f"**{group}**", "", "| provider | median ms | min ms | ours is × faster | GB/s | items/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for prov, r in by.items():
            med, mn = r["stats"]["median"], r["stats"]["min"]
            ratio = f"{med / base['stats']['median']:.2f}" if base is not None else "-"
            nbytes = r["extra_info"].get("bytes")
            bw = f"{nbytes / med / 1e9:.1f}" if nbytes else "-"
            items = r["extra_info"].get("images")
            rate = f"{items / med:.1f}" if items else "-"
            lines.append(f"| {prov} | {med * 1e3:.2f} | {mn * 1e3:.2f} | {ratio} | {bw} | {rate} |")
        lines.append("")
    return lines


def sections(data: dict) -> dict[str, str]:
    by_section = defaultdict(list)
    for b in data["benchmarks"]:
        by_section[section_of(b)].append(b)
    head = machine_line(data)
    return {name: "\n".join([head, ""] + group_tables(rows)) for name, rows in by_section.items()}


def update(doc: str, section: str, text: str) -> str:
    begin, end = f"<!-- report:{section}:begin -->", f"<!-- report:{section}:end -->"
    block = f"{begin}\n{text}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc)
    return doc.rstrip() + f"\n\n## {section}\n\n" + block + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json_files", nargs="+", metavar="json_file",
                    help="pytest-benchmark JSON; with several, a section shows each run's tables in turn "
                         "(e.g. the default allocator, then TNA_BENCH_TUNED_MALLOC=1)")
    ap.add_argument("--out")
    args = ap.parse_args()
    found: dict[str, str] = {}
    for path in args.json_files:
        for name, text in sections(json.loads(Path(path).read_text())).items():
            found[name] = f"{found[name]}\n\n{text}" if name in found else text
    if not args.out:
        for name, text in found.items():
            print(f"## {name}\n\n{text}")
        return
    out = Path(args.out)
    doc = out.read_text() if out.exists() else "# Benchmarks\n"
    for name, text in found.items():
        doc = update(doc, name, text)
    out.write_text(doc)


if __name__ == "__main__":
    main()
