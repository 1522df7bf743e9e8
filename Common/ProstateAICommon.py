"""ProstateAICommon: hidden Slicer module that ships what the three ProstateAI modules share.

It has no GUI. Declaring it as a dependency (`self.parent.dependencies`) makes Slicer load it first,
so the modules can import:
- `ProstateAICore`: the GUI-free core package (errors, image I/O and geometry, intensity statistics,
  progress, jobs, preview rendering);
- `ProstateAIMRML`: volume node <-> SimpleITK conversion and segmentation nodes (MRML, no Qt);
- `ProstateAIWidgetBase`: the parameter-node and background-job plumbing of the module widgets.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class ProstateAICommon(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ProstateAI Common"
        self.parent.categories = ["ProstateAI"]
        self.parent.dependencies = []
        self.parent.contributors = ["ProstateAI contributors"]
        self.parent.helpText = "Shared code of the ProstateAI modules (no user interface)."
        self.parent.acknowledgementText = "ProstateAI contributors; BSD 3-Clause."
        self.parent.hidden = True
