"""ProstateAI's shared GUI-free core: what every module and application uses, nothing module-specific.

- `errors`: `InputError` (a message shown as is), `Cancelled`
- `imageio`: reading DICOM/NIfTI/NRRD/MHA with validation, atomic writes
- `geometry`: grids (`same_grid`, `require_same_grid`), LPS <-> RAS, `image_like`
- `intensity`: exact percentiles and histograms, windows, min-max mapping, mean/std
- `filters`: SimpleITK filters run with progress in float32, stable diffusion time step
- `progress`: the progress callback and the `PROGRESS` line protocol
- `jobs`: a command run out of process with progress and a cancel that ends its process tree
- `render`: PNG previews in radiological orientation
- `commands`: the command-line runner each Lib's `cli` and the `prostateai` application use

Imports flow one way: ProstateAICore <- CTPreprocessLib, MRStandardizeLib <- ProstateAILib <- applications.
"""

__version__ = "0.1.0"
