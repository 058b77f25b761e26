"""Runs one measured benchmark function in its own interpreter and prints its result with peak RSS.

``python -m bench.child module:function '{"arg": 1}'``
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys


def peak_rss_kib() -> int:
    """VmHWM (the resident high-water mark) from /proc; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> None:
    module, func = argv[0].split(":")
    result = getattr(importlib.import_module(module), func)(**json.loads(argv[1]))
    result["peak_rss_kib"] = peak_rss_kib()
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    # A time-boxed pass leaves its worker thread mid-batch; ending here drops it (and its
    # uncommitted transaction) the way a killed run would, instead of waiting for it.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
