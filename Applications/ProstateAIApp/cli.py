"""`prostateai`: one command line with every module's sub-commands (CT, MR, segmentation).

Each Lib's `cli.register` adds its own sub-commands (and `view.register` the browser app's); the runner
(errors as one line, exit 2; Ctrl-C exit 130; `--progress` lines for jobs) is ProstateAICore.commands.
"""

from __future__ import annotations

from ProstateAICore import commands

DESCRIPTION = "ProstateAI: CT preprocessing, MR standardisation and prostate segmentation."


def main(argv: list[str] | None = None) -> int:
    from CTPreprocessLib import cli as ct_cli
    from MRStandardizeLib import cli as mr_cli
    from ProstateAILib import cli as seg_cli

    from . import view  # the browser app (`prostateai view`); trame is imported only when it runs

    return commands.main([ct_cli.register, mr_cli.register, seg_cli.register, view.register], argv, "prostateai",
                         DESCRIPTION)


def run() -> None:
    """Console entry point (`prostateai`): `main()`, then a fast exit (ProstateAICore.commands.exit_fast)."""
    commands.exit_fast(main())


if __name__ == "__main__":
    run()
