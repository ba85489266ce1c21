"""``mtbert-train``: one multi-task training run, no Ray."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="mtbert-train",
        description=(
            "Fine-tune one minBERT encoder on SST sentiment, Quora paraphrase and STS similarity at once. "
            "Training runs are not available in this release: this version ships the encoder and its "
            "weight loading (python -c 'from mtbert import load_encoder')."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
