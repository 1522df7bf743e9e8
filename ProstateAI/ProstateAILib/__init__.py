"""Prostate segmentation core (GUI-free): models, inference, the segmentation pipeline, training, metrics.

Builds on ProstateAICore (I/O, errors, jobs) and on CTPreprocessLib / MRStandardizeLib (resampling,
normalisation). Torch is imported lazily, so reading the catalog or a .seg.nrrd never pays for it.
`cli` holds its commands (segment, train, evaluate, ...), `demo` and `bench` its demo and benchmark.
"""
