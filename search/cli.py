"""``mtbert-search``: hyperparameter search over multi-task runs."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="mtbert-search",
        description=(
            "Search hyperparameters of multi-task BERT fine-tuning with Ray Tune, Optuna and ASHA. "
            "Searches are not available in this release; single runs train with mtbert-train."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
