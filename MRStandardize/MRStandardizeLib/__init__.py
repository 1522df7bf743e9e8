"""MR standardisation core (GUI-free): N4, Nyul, normalisation, denoise, registration.

- `n4`: N4 bias-field correction (`n4_correct`, preview/full presets), the field returned too
- `nyul`: Nyul histogram standardisation (`fit`, `apply`, JSON models: never pickle)
- `normalize`: percentile / z-score normalisation at image, patient or dataset level
- `denoise`: patch-based denoising and cheap smoothing
- `registration`: ADC / high-b DWI -> T2 registration (rigid, affine, + BSpline; restarts)
- `registration_check`: checkerboards, blends and the before/after PNG
- `cli` (`prostateai n4|nyul|normalize|denoise|register`), `demo`, `bench` (+ `registration_bench`)

Shared pieces (I/O, errors, percentiles, filters, previews) come from ProstateAICore; nothing here
imports another module's Lib.
"""
