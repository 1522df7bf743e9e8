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


def dciodvfy_errors(path) -> tuple[list[str], str]:
    """(lines with "Error", whole output) of dciodvfy (dicom3tools) on a DICOM file; skips the test
    when dciodvfy is missing (`make test` installs it as root)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed and could not be: `make tools` or "
                    "`apt-get install dicom3tools` installs it")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    return [line for line in output.splitlines() if "Error" in line], output
