"""Command line: ``python -m companion audit CONFIG`` (see ``companion.audit``)."""

import sys

COMMANDS = ("audit",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m companion {{{','.join(COMMANDS)}}} ...\n"
              "  audit CONFIG   which of the book's biases a TRL or verl configuration is exposed to",
              file=sys.stderr)
        return 2
    from companion.audit import main as audit_main

    return audit_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
