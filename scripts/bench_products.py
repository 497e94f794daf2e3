"""The product-shot benchmark (see bench/echoimage_bench/products.py): different products
photographed alike, queried against each other; every copy verdict is a false one.

Usage: scripts/bench_products.py [--out bench-out] [--catalogue 150] [--queries 150] [--flat]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--catalogue", type=int, default=150, help="product shots indexed")
    parser.add_argument("--queries", type=int, default=150, help="other shots queried")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat", action="store_true", help="objects without labels")
    args = parser.parse_args()
    if args.catalogue < 1 or args.queries < 1:
        parser.error("--catalogue and --queries must be positive")
    from echoimage_bench.products import render_products_markdown, run_products

    result = run_products(args.out, catalogue=args.catalogue, queries=args.queries,
                          seed=args.seed, label=not args.flat)
    md = render_products_markdown(result)
    (args.out / "products.md").write_text(md + "\n")
    print(md)
    print(json.dumps({k: v for k, v in result.items() if k not in ("called", "machine")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
