"""Segmentation sub-commands (`segment`, `train`, `evaluate`): added by the segmentation work."""


def register(subparsers) -> None:
    """No segmentation commands yet."""
