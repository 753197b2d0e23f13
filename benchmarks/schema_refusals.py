"""How often a request valid by the OpenAPI document alone is refused, and why: schemathesis'
positive generation (a fixed seed) against a running server, every operation, its answers tallied
by status and its 422s by rule (the sentences of `detail`, numbers and quoted values left out).

A 422 here is a rule the schema does not state. Some no OpenAPI parameter can (one of `q` and
`query`, min < max); the others are the schema's to state (docs/api.md, "OpenAPI").

    soundscape serve --bundle data/demo/bundle --store data/demo/store --port 8765 &
    python benchmarks/schema_refusals.py http://127.0.0.1:8765 --examples 60 --json /tmp/refusals.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

HOST = {"Host": "localhost"}  # a host the server's default policy allows


def rule(sentence: str) -> str:
    """A 422 sentence without the values it quotes back or the numbers it names."""
    return re.sub(r"'.*|\d+|\(.*", "", sentence).strip()[:70]


def tally(base: str, examples: int) -> dict:
    api = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=HOST)
    statuses: Counter[int] = Counter()
    rules: Counter[str] = Counter()
    for result in api.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,  # the same requests on each run: before and after compare
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        def send(case) -> None:
            answer = case.call(headers=HOST)
            statuses[answer.status_code] += 1
            if answer.status_code == 422:
                rules.update(rule(sentence) for sentence in answer.json()["detail"].split("; "))

        send()
    total = sum(statuses.values())
    return {
        "requests": total,
        "statuses": dict(sorted(statuses.items())),
        "refused_422_share": round(statuses[422] / total, 3),
        "rules": dict(rules.most_common()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the server's base URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("--examples", type=int, default=60, help="requests generated per operation (default 60)")
    parser.add_argument("--json", help="also write the tally here")
    args = parser.parse_args()
    found = tally(args.base.rstrip("/"), args.examples)
    text = json.dumps(found, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
