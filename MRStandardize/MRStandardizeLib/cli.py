"""MR sub-commands (`n4`, `nyul`, `normalize`, `denoise`, `register`): added by the MR work."""


def register(subparsers) -> None:
    """No MR commands yet."""
