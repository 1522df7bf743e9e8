"""CT sub-commands (`ct`, `info`)."""


def register(subparsers) -> None:
    """Filled in by the CT work."""
