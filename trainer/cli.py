"""The ``unseg`` console script: the library's verbs plus ``train``."""

from __future__ import annotations

import sys

from fiftyone_unseg import cli as library_cli


def main(argv=None) -> int:
    parser = library_cli.build_parser()
    return library_cli.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
