"""Curvature of a model around its weights: per-group tangent kernels (paper Sec. 3.2.2, Eq. 7) and the
Hessian trace (Alg. 1), the two quantities the PL-regularised pruning method reads."""

from plprune.curvature.hessian import (
    EXACT_MAX_PARAMS,
    PROBE_DISTRIBUTIONS,
    HutchinsonEstimate,
    exact_hessian_trace,
    hutchinson_trace,
    model_exact_hessian_trace,
    model_hessian_trace,
)
from plprune.curvature.ntk import (
    CONDITION_EPS,
    KernelFeatures,
    compute_group_features,
    condition_numbers,
    group_jacobians,
    group_kernels,
    kernel_features,
    model_condition_number,
    per_sample_gradients,
    per_sample_loss_output,
)

__all__ = [
    "CONDITION_EPS",
    "EXACT_MAX_PARAMS",
    "PROBE_DISTRIBUTIONS",
    "HutchinsonEstimate",
    "KernelFeatures",
    "compute_group_features",
    "condition_numbers",
    "exact_hessian_trace",
    "group_jacobians",
    "group_kernels",
    "hutchinson_trace",
    "kernel_features",
    "model_condition_number",
    "model_exact_hessian_trace",
    "model_hessian_trace",
    "per_sample_gradients",
    "per_sample_loss_output",
]
