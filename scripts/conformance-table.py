#!/usr/bin/env python3
"""Prints one line per test of a pytest junit XML file, then the totals.

Usage: conformance-table.py JUNIT.xml
"""

import sys
import xml.etree.ElementTree as ET


def outcome(case):
    for kind, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        el = case.find(kind)
        if el is not None:
            msg = (el.get("message") or "").splitlines()
            return word, msg[0][:100] if msg else ""
    return "passed", ""


def main():
    root = ET.parse(sys.argv[1]).getroot()
    rows = []
    for case in root.iter("testcase"):
        word, why = outcome(case)
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        rows.append((module + "::" + case.get("name", ""), word, float(case.get("time") or 0), why))
    rows.sort()
    width = max((len(r[0]) for r in rows), default=4)
    print(f"{'test':<{width}}  {'result':<7}  {'secs':>6}  note")
    for name, word, secs, why in rows:
        print(f"{name:<{width}}  {word:<7}  {secs:6.1f}  {why}")
    counts = {}
    for _, word, _, _ in rows:
        counts[word] = counts.get(word, 0) + 1
    print(
        f"{counts.get('passed', 0)} passed, {counts.get('failed', 0) + counts.get('error', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped"
    )


if __name__ == "__main__":
    main()
