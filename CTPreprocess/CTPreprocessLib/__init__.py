"""CT preprocessing core (GUI-free): HU loading, windowing, normalisation, denoise, resample, crop/pad.

Steps run in the order the literature recommends (../shared/METHODS.md):
denoise -> resample -> window/clip -> normalise -> crop/pad. `pipeline.run_pipeline` chains them;
each step is also a plain function on SimpleITK images:

- `hu`: `load_ct` (DICOM series / file, NIfTI, NRRD, MHA -> HU + `CTLoadInfo`), `validate_ct`, `fill_padding`
- `window`: `PRESETS`, `PRESET_LABELS`, `window_from_preset`, `window_from_level_width`,
  `percentile_window` (percentiles from `ProstateAICore.intensity`: exact for integer data), `apply_window`
- `normalize`: `minmax` (uint8 / uint16 / float32), `zscore`
- `denoise`: `curvature_flow`, `anisotropic_diffusion`, `median`, `gaussian`, `denoise(image, config)`
- `resample`: `resample_to_spacing`, `resample_to_reference`
- `croppad`: `crop_or_pad`, `reduce_slices`
- `pipeline`: `CTPipelineConfig`, `validate_config`, `resolve_window`, `run_pipeline`
- `demo` (`python -m CTPreprocessLib.demo`), `bench` (`python -m CTPreprocessLib.bench`), `cli` (`prostateai ct|info`)

Shared pieces (I/O, errors, percentiles, previews) come from ProstateAICore; nothing here imports
another module's Lib.
"""
