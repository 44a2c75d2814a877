"""`l2m`: one command with verbs (train, generate, data, ckpt, submit, eval). Errors in the user's input print one line and exit 2."""
from __future__ import annotations

import argparse
import sys

from l2m_train.cli import ckpt, data, generate, submit, train
from l2m_train.cli import eval as eval_cmd
from l2m_train.cli.errors import UserError

VERBS = {"train": train, "generate": generate, "data": data, "ckpt": ckpt, "submit": submit, "eval": eval_cmd}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2m",
        description="Train and run Large Memory Models (LM2): Transformers with a gated, causal memory bank.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, verb in VERBS.items():
        verb.add_arguments(verbs.add_parser(name, help=verb.HELP, description=verb.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot mix options and a trailing positional list (`--print-config model.x=1`): collect leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.verb not in ("train", "submit") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    try:
        return VERBS[args.verb].run(args)
    except UserError as err:
        print(f"l2m {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"l2m {args.verb}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
