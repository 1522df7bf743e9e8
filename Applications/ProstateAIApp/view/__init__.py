"""`prostateai view`: the browser app (trame-slicer) on the same MRML and the same Logic as the Slicer module.

    prostateai view [INPUT ...] [--segmentation SEG] [--host 127.0.0.1] [--port N]

INPUT: a T2 (DICOM folder or image file, then optionally the ADC and the HBV) or a study folder (the
series are chosen as `prostateai segment --study` chooses them); none: the bundled sample case.
`--segmentation`: a .seg.nrrd or a label map shown as segments (to correct and save).

- `slicer_module`: imports the Slicer module files (ProstateAI.py) outside Slicer, on trame-slicer's scene.
- `case`: reads the inputs and a segmentation file (study selection, image reading: Lib functions).
- `app`: the page (layout and callbacks); every step calls ProstateAI.ProstateAILogic or a Lib.
- `teaching`: the N4 / Nyul / registration panels (MRStandardizeLib calls in a background thread).

Registering the sub-command imports nothing heavy; trame, VTK and slicer are imported when it runs.
"""

from __future__ import annotations

import os
import sys

from ProstateAICore import commands


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "view", help="open a case in the browser: slice and 3D views, segment, review, correct, save",
        description="Serve the ProstateAI browser app (trame-slicer) for a T2 or a study folder (default: the "
                    "bundled sample case) and print its URL; Ctrl-C stops it. Segmentation runs out of process "
                    "through the Slicer module's Logic; the result is reviewed (threshold, Accept / Reject / "
                    "Undo, quality), corrected with the segment editor and saved as .seg.nrrd, NIfTI or DICOM SEG; "
                    "changes not saved when it stops are kept in <Save as name>.unsaved.seg.nrrd.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="T2 (DICOM folder or image file) [ADC [HBV]], or one study folder")
    p.add_argument("--segmentation", metavar="SEG", help=".seg.nrrd or label map to show as segments")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=commands.bounded_int(0, 65535, "port"), default=8080,
                   help="port (default: 8080; 0: any free port)")
    p.set_defaults(func=_view)
    commands.declare_paths(p, inputs=["inputs", "segmentation"])


def _keep_unsaved(app) -> None:
    """Nothing lost on Ctrl-C: unsaved corrections are written beside the file they would have gone to."""
    try:
        kept = app.keep_unsaved()
    except Exception as error:  # noqa: BLE001 - stopping goes on; the user is told in one line
        print(f"prostateai view: error: unsaved changes could not be kept: {error}", file=sys.stderr, flush=True)
        return
    if kept:
        print(f"prostateai view: unsaved changes to '{app.current.GetName()}' kept in {kept}", flush=True)


def _view(args) -> int:
    # Headless OpenGL (Mesa EGL) unless the user chose a render window.
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from .app import ProstateAIViewApp

    app = ProstateAIViewApp(inputs=args.inputs, segmentation=args.segmentation)
    server = app.server
    if app.state.error:
        print(f"prostateai view: error: {app.state.error} (shown on the page; the server runs)", file=sys.stderr)

    def ready(**_):
        print(f"prostateai view: serving at http://{args.host}:{server.port}/ (Ctrl-C to stop)", flush=True)

    server.controller.on_server_ready.add(ready)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame would read its own options from our command line
    try:
        server.start(host=args.host, port=args.port, timeout=0, open_browser=False, show_connection_info=False,
                     disable_logging=True)
    except KeyboardInterrupt:
        pass
    finally:
        sys.argv = argv
        _keep_unsaved(app)
        app.close()
    print("prostateai view: stopped", flush=True)
    return 0
