"""Edge-preserving and plain denoising (SimpleITK filters), first step of the CT chain.

All filters keep the geometry. Curvature flow, anisotropic diffusion and Gaussian smoothing give
float32 (their output is not integer); the median keeps the input pixel type.
"""

from __future__ import annotations

import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.filters import run_float32
from ProstateAICore.filters import stable_time_step as _stable_time_step
from ProstateAICore.progress import ProgressFn, observe_filter

METHODS = ("none", "curvature_flow", "anisotropic", "median", "gaussian")
ANISOTROPIC_KINDS = ("gradient", "curvature")


def _check_iterations(iterations: int) -> int:
    if int(iterations) != iterations or iterations < 1:
        raise InputError(f"The number of denoising iterations must be a positive integer (got {iterations}).")
    return int(iterations)


def _check_positive(value: float, what: str) -> float:
    if not value > 0:
        raise InputError(f"The {what} must be positive (got {value}).")
    return float(value)


def stable_time_step(image: sitk.Image, time_step: float) -> float:
    """The requested time step, clamped to ITK's stable limit (ProstateAICore.filters.stable_time_step)."""
    return _stable_time_step(image, _check_positive(time_step, "time step"))


def _run(sitk_filter, image: sitk.Image, progress: ProgressFn | None, message: str, real: bool = True) -> sitk.Image:
    if real:
        return run_float32(sitk_filter, image, progress, message)
    observe_filter(sitk_filter, progress, message)
    return sitk_filter.Execute(image)


def curvature_flow(image: sitk.Image, iterations: int = 5, time_step: float = 0.0625,
                   progress: ProgressFn | None = None) -> sitk.Image:
    f = sitk.CurvatureFlowImageFilter()
    f.SetNumberOfIterations(_check_iterations(iterations))
    f.SetTimeStep(_check_positive(time_step, "time step"))
    return _run(f, image, progress, "Curvature flow")


def anisotropic_diffusion(image: sitk.Image, iterations: int = 5, time_step: float = 0.0625,
                          conductance: float = 3.0, kind: str = "gradient",
                          progress: ProgressFn | None = None) -> sitk.Image:
    """Perona-Malik diffusion: `kind` "gradient" or "curvature" (ITK's two anisotropic filters)."""
    if kind not in ANISOTROPIC_KINDS:
        raise InputError(f"Unknown anisotropic diffusion kind '{kind}'; choose one of: {', '.join(ANISOTROPIC_KINDS)}.")
    f = sitk.GradientAnisotropicDiffusionImageFilter() if kind == "gradient" else sitk.CurvatureAnisotropicDiffusionImageFilter()
    f.SetNumberOfIterations(_check_iterations(iterations))
    f.SetTimeStep(stable_time_step(image, time_step))
    f.SetConductanceParameter(_check_positive(conductance, "conductance"))
    return _run(f, image, progress, "Anisotropic diffusion")


def median(image: sitk.Image, radius: int = 1, progress: ProgressFn | None = None) -> sitk.Image:
    if int(radius) != radius or radius < 1:
        raise InputError(f"The median radius must be a positive whole number of voxels (got {radius}).")
    f = sitk.MedianImageFilter()
    f.SetRadius(int(radius))
    return _run(f, image, progress, "Median filter", real=False)


def gaussian(image: sitk.Image, sigma_mm: float = 1.0, progress: ProgressFn | None = None) -> sitk.Image:
    """Recursive Gaussian, sigma in millimetres (physical units, so anisotropic voxels are handled)."""
    f = sitk.SmoothingRecursiveGaussianImageFilter()
    f.SetSigma(_check_positive(sigma_mm, "Gaussian sigma (mm)"))
    return _run(f, image, progress, "Gaussian smoothing")


def denoise(image: sitk.Image, config, progress: ProgressFn | None = None) -> sitk.Image:
    """Dispatch on config.denoise (a CTPipelineConfig); "none" returns the image unchanged."""
    method = config.denoise
    if method == "none":
        return image
    if method == "curvature_flow":
        return curvature_flow(image, config.denoise_iterations, config.denoise_time_step, progress)
    if method == "anisotropic":
        return anisotropic_diffusion(image, config.denoise_iterations, config.denoise_time_step,
                                     config.denoise_conductance, config.anisotropic_kind, progress)
    if method == "median":
        return median(image, config.median_radius, progress)
    if method == "gaussian":
        return gaussian(image, config.gaussian_sigma_mm, progress)
    raise InputError(f"Unknown denoising method '{method}'; choose one of: {', '.join(METHODS)}.")
