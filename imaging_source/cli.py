"""``xds-imaging-source``: the XDS-I.b Imaging Document Source (not built yet, see issue 4)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xds-imaging-source",
        description="IHE XDS-I.b Imaging Document Source. Not implemented yet: tracked by the imaging source issue.",
    )
    parser.parse_args(argv)
    print("xds-imaging-source is not implemented yet (see the imaging source issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
