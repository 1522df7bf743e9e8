"""ProstateAI core library (GUI-free).

Shared pieces every module uses live here: input validation and errors (`errors`), image
reading/writing with atomic outputs (`imageio`), and the `prostateai` command line (`cli`).
Segmentation code imports torch lazily so CT/MR preprocessing never pays for it.
"""

__version__ = "0.1.0"
