"""Parses OpenMetrics text (stdin) with the prometheus_client package's parser, the one
Prometheus's Python ecosystem uses, and prints the families as JSON for the Rust test:
[{"name", "type", "unit", "samples": [{"name", "labels", "value"}]}]. A parse error (a clashing
name, a malformed line, a missing # EOF) exits non-zero with the parser's message."""

import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    out = []
    for f in text_string_to_metric_families(text):
        out.append({
            "name": f.name,
            "type": f.type,
            "unit": f.unit,
            "samples": [
                {
                    "name": s.name,
                    "labels": s.labels,
                    # JSON has no infinity; buckets' le labels stay strings.
                    "value": s.value if math.isfinite(s.value) else None,
                }
                for s in f.samples
            ],
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
