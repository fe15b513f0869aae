"""Turns a pytest-benchmark JSON file into a markdown table of same-run ratios.

    python benchmarks/report.py build/bench.json                  # print the tables
    python benchmarks/report.py build/bench.json --out docs/BENCHMARKS.md --section lif

With --out, the table replaces the block between `<!-- report:SECTION:begin -->` and
`<!-- report:SECTION:end -->` in that file (appended if absent). Each group's ratio column is
time(provider) / time(tna): how many times faster ours is. Bandwidth is bytes / median time."""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


def tables(data: dict, ours: str = "tna") -> str:
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    machine = data.get("machine_info", {})
    lines = [f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{machine.get('cpu', {}).get('count', '?')} logical CPUs; run {data.get('datetime', '?')}", ""]
    for group, rows in groups.items():
        by = {r["extra_info"].get("provider", r["name"]): r for r in rows}
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
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json_file")
    ap.add_argument("--out")
    ap.add_argument("--section", default="latest")
    args = ap.parse_args()
    text = tables(json.loads(Path(args.json_file).read_text()))
    if not args.out:
        print(text)
        return
    out = Path(args.out)
    doc = out.read_text() if out.exists() else "# Benchmarks\n"
    begin, end = f"<!-- report:{args.section}:begin -->", f"<!-- report:{args.section}:end -->"
    block = f"{begin}\n{text}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    doc = pattern.sub(lambda _: block, doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + block + "\n"
    out.write_text(doc)


if __name__ == "__main__":
    main()
