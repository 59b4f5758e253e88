r"""The paper's theorems, checked numerically on low-dimensional data with exact references.

* :mod:`cmlite.theory.theorem1`  Theorem 1: the zero-CD-loss consistency function is "run the solver from t_n
  down to eps"; its sup error against the exact consistency function is O(Delta t^p) (Euler p = 1, Heun p = 2).
  Also small MLPs trained by CD: discretisation error versus optimisation floor.
* :mod:`cmlite.theory.theorem2`  Theorem 2: with the true score and Euler, CD and CT losses and gradients
  agree up to o(Delta t) (common random numbers, standard errors).
* :mod:`cmlite.theory.continuous`  Theorems 3-6 (Appendix B): (N-1)^2 L^N, (N-1) L^N (L1) and (N-1) grad L^N
  converge to their continuous-time limits with order 1 in 1/N; CT without stop-gradient has a biased limit
  (order 2, midpoint rule). Also the CD tangent field for figures.
* :mod:`cmlite.theory.symbolic`  sympy: boundary conditions of the parameterisations, the closed-form Gaussian
  consistency function, local truncation error of Euler and Heun (needs ``sympy``).
* :mod:`cmlite.theory.pfode`     PF-ODE facts: marginals from N(0, T^2 I), invertibility (round trip).
* :mod:`cmlite.theory.common`    toys, trajectory test sets, exact references, slope fits.
* :mod:`cmlite.theory.report`    ``cmlite theorem [--json]``.

Every function returns plain dicts (JSON-ready) for tables and plots; everything runs in float64.
"""
from .common import (Toy, end_points, consistency_reference, fit_slope, get_toy, lipschitz_on_test_set,
                     local_slopes, trajectories)
from .theorem1 import (learned_cd_experiment, local_error_order, theorem1_table, zero_loss_consistency,
                       zero_loss_errors)
from .theorem2 import cd_ct_gap, posterior_noise_quadrature, relative_norm, theorem2_table
from .pfode import energy_distance_test, marginal_check, round_trip_check, start_mismatch_tv_bound

__all__ = ["Toy", "get_toy", "end_points", "trajectories", "consistency_reference", "fit_slope",
           "local_slopes", "lipschitz_on_test_set",
           "zero_loss_consistency", "zero_loss_errors", "theorem1_table", "local_error_order",
           "learned_cd_experiment",
           "cd_ct_gap", "theorem2_table", "posterior_noise_quadrature", "relative_norm",
           "energy_distance_test", "marginal_check", "round_trip_check", "start_mismatch_tv_bound",
           "continuous_report", "tangent_field",
           "symbolic", "run_theorem"]


def __getattr__(name):  # lazy: sympy is optional, and the report pulls in everything
    import importlib
    if name == "symbolic":
        return importlib.import_module(f"{__name__}.symbolic")
    if name == "run_theorem":
        return importlib.import_module(f"{__name__}.report").run_theorem
    if name in ("continuous_report", "tangent_field"):  # lazy: it needs cmlite.continuous (the training losses)
        return getattr(importlib.import_module(f"{__name__}.continuous"), name)
    raise AttributeError(f"module 'cmlite.theory' has no attribute {name!r}")
