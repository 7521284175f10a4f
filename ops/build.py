"""Build the ``roi_ops`` extension ahead of time.

    python -m ops.build          # build (and load) the CPU extension (CPU + CUDA when a GPU is available)
    python -m ops.build --cuda   # compile + link the CUDA sources too (works without a GPU); does not load

The extension is JIT-compiled with ``torch.utils.cpp_extension.load(..., is_python_module=False)`` on first
use and cached in ``<repo>/.build/``; ``MAX_JOBS`` is honoured. ``--cuda`` exits non-zero when the CUDA
sources do not compile. ``load()`` / ``build_cuda()`` are re-exported from :mod:`ops._extension`.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._extension import BUILD_ROOT, _say, build_cuda, load

__all__ = ["BUILD_ROOT", "build_cuda", "load", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cuda", action="store_true", help="also compile the CUDA sources (no GPU needed)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.cuda:
        return build_cuda(args.verbose)
    t0 = time.time()
    load(args.verbose)  # `import ops` above already built and loaded it; this is then a no-op
    _say(f"roi_ops (CPU) ready in {BUILD_ROOT} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
