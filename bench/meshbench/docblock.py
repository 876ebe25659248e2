"""The latest-run block of docs/performance.md: the lines between two markers
that a complete run rewrites (render.py `render_latest_block` writes its
content); nothing else of the file is touched."""

import os

from .common import ROOT

BLOCK_START = "<!-- bench:latest:start (written by make bench: bench/bench.py) -->"
BLOCK_END = "<!-- bench:latest:end -->"
# The file whose block a complete run rewrites (--doc).
DOC = os.path.join(ROOT, "docs", "performance.md")


def update_block(path, block):
    """Replaces the block between the markers of `path`; returns False (and
    changes nothing) when the file or its markers are missing."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False
    start, end = text.find(BLOCK_START), text.find(BLOCK_END)
    if start < 0 or end < start:
        return False
    text = text[:start] + block + text[end + len(BLOCK_END):]
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return True
