"""``python -m bench``: run every benchmark and print one JSON document."""

from __future__ import annotations

import json
import sys

from bench import runtime, scheduler


def main() -> None:
    quick = "--quick" in sys.argv
    results = {"runtime": runtime.run(quick=quick), "scheduler": scheduler.run(quick=quick)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
