"""What the CLI tests share: running `prostateai` in-process and checking a one-line refusal."""

from __future__ import annotations


def refused(argv, capsys, *expected) -> str:
    """Run `prostateai ARGV` in-process; assert exit 2 and exactly one stderr line (no traceback)
    containing each of `expected`; return that line."""
    from ProstateAIApp.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err
