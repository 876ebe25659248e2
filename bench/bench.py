#!/usr/bin/env python3
"""Side-by-side benchmark: meshguard vs Envoy's native filters vs no filter.

    ENVOY_BIN=... MESHGUARD_WASM=... python3 bench/bench.py [--quick]

The entry point of `make bench`; the bench itself is the package
bench/meshbench (one module per job, see its __init__). See bench/README.md.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from meshbench.cli import main  # noqa: E402
from meshbench.common import BenchError  # noqa: E402

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
