"""CT preprocessing core (GUI-free): HU loading, windowing, normalisation, denoise, resample, crop/pad.

Steps run in the order the literature recommends (../shared/METHODS.md):
denoise -> resample -> window/clip -> normalise -> crop/pad. `pipeline.run_pipeline` chains them;
each step is also a plain function on SimpleITK images.
"""
