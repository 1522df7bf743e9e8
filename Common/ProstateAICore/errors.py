"""Errors shown to users: one type, with a message a radiologist can act on."""


class InputError(ValueError):
    """Bad input (wrong dimension, NaN, constant image, mismatched grids, unreadable file...).

    The message is meant to be shown as is, in the GUI or on the command line.
    """


class Cancelled(Exception):
    """The user cancelled a running step; nothing was written."""


class Terminated(Cancelled):
    """The process was asked to stop (SIGTERM, e.g. a job's Cancel); handled like Cancelled."""
