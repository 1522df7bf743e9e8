"""MR denoising: patch-based (non-local means family) or a cheaper edge-preserving smoothing.

- "patch": sitk.PatchBasedDenoisingImageFilter (Awate & Whitaker). Cost grows with
  voxels x (2 * patch_radius + 1)^3 x sample_patches x iterations: minutes on a full prostate T2
  volume with the defaults below on a 2-core machine -- run it as a job (CLI `--progress`).
  The noise model (gaussian or rician: MR magnitude images are Rician) is used only with a
  positive `fidelity_weight`, which is why that defaults to 0.1 here (ITK's default, 0, ignores it).
- "smooth": gradient anisotropic diffusion (Perona-Malik; seconds), with the time step set from the
  voxel spacing so it is always stable; or "gaussian" (sigma in mm), the cheapest.

Output: float32 on the input grid; the input is never modified; `seconds` is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import SimpleITK as sitk
from ProstateAICore import imageio
from ProstateAICore.errors import InputError
from ProstateAICore.filters import run_float32, stable_time_step
from ProstateAICore.progress import ProgressFn


NOISE_MODELS = {
    "none": sitk.PatchBasedDenoisingImageFilter.NOMODEL,
    "gaussian": sitk.PatchBasedDenoisingImageFilter.GAUSSIAN,
    "rician": sitk.PatchBasedDenoisingImageFilter.RICIAN,
}
SMOOTHERS = ("anisotropic", "gaussian")


@dataclass
class DenoiseResult:
    image: sitk.Image  # float32, input grid
    seconds: float
    method: str
    parameters: dict = field(default_factory=dict)


def patch_denoise(
    image: sitk.Image,
    noise_model: str = "rician",
    kernel_bandwidth_sigma: float | None = None,
    patch_radius: int = 2,
    iterations: int = 1,
    sample_patches: int = 100,
    fidelity_weight: float = 0.1,
    noise_sigma: float | None = None,
    progress: ProgressFn | None = None,
) -> DenoiseResult:
    """Patch-based denoising; kernel_bandwidth_sigma None = estimated from the image by ITK."""
    imageio.validate_volume(image)
    if noise_model not in NOISE_MODELS:
        raise InputError(f"Unknown noise model '{noise_model}'; use one of {', '.join(NOISE_MODELS)}.")
    if patch_radius < 1 or iterations < 1 or sample_patches < 1:
        raise InputError("Patch radius, iterations and sample patches must all be >= 1.")
    denoiser = sitk.PatchBasedDenoisingImageFilter()
    denoiser.SetNoiseModel(NOISE_MODELS[noise_model])
    denoiser.SetNoiseModelFidelityWeight(float(fidelity_weight) if noise_model != "none" else 0.0)
    denoiser.SetPatchRadius(int(patch_radius))
    denoiser.SetNumberOfIterations(int(iterations))
    denoiser.SetNumberOfSamplePatches(int(sample_patches))
    denoiser.SetKernelBandwidthEstimation(kernel_bandwidth_sigma is None)
    if kernel_bandwidth_sigma is not None:
        denoiser.SetKernelBandwidthSigma(float(kernel_bandwidth_sigma))
    if noise_sigma is not None:
        denoiser.SetNoiseSigma(float(noise_sigma))
    parameters = dict(noise_model=noise_model, kernel_bandwidth_sigma=kernel_bandwidth_sigma, patch_radius=patch_radius,
                      iterations=iterations, sample_patches=sample_patches, fidelity_weight=fidelity_weight,
                      noise_sigma=noise_sigma)
    return _timed(denoiser, image, progress, "Patch-based denoising", "patch", parameters)


def smooth(
    image: sitk.Image,
    method: str = "anisotropic",
    iterations: int = 5,
    conductance: float = 1.0,
    sigma_mm: float | None = None,
    progress: ProgressFn | None = None,
) -> DenoiseResult:
    """Cheap smoothing: edge-preserving anisotropic diffusion, or a Gaussian (sigma_mm: min spacing)."""
    imageio.validate_volume(image)
    if method not in SMOOTHERS:
        raise InputError(f"Unknown smoothing method '{method}'; use one of {', '.join(SMOOTHERS)}.")
    if method == "anisotropic":
        smoother = sitk.GradientAnisotropicDiffusionImageFilter()
        smoother.SetNumberOfIterations(int(iterations))
        smoother.SetConductanceParameter(float(conductance))
        smoother.SetTimeStep(stable_time_step(image))
        parameters = dict(iterations=iterations, conductance=conductance, time_step=smoother.GetTimeStep())
    else:
        sigma = float(sigma_mm) if sigma_mm is not None else min(image.GetSpacing())
        if sigma <= 0:
            raise InputError(f"Gaussian sigma must be > 0 mm (got {sigma}).")
        smoother = sitk.SmoothingRecursiveGaussianImageFilter()
        smoother.SetSigma(sigma)
        parameters = dict(sigma_mm=sigma)
    return _timed(smoother, image, progress, f"Smoothing ({method})", method, parameters)


def _timed(sitk_filter, image: sitk.Image, progress: ProgressFn | None, message: str, method: str,
           parameters: dict) -> DenoiseResult:
    start = time.perf_counter()
    out = run_float32(sitk_filter, image, progress, message)
    return DenoiseResult(out, time.perf_counter() - start, method, parameters)
