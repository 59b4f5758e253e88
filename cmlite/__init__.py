"""cmlite: Consistency Models (Song et al., 2023), compact, measured and tested.

The method in small modules, one job each:

* :mod:`cmlite.schedules`       Karras boundaries, CT / improved-CT schedules, lognormal index sampling
* :mod:`cmlite.ode`             the PF ODE, Euler and Heun steps, solves, a high-accuracy reference
* :mod:`cmlite.toys`            Gaussian mixtures with exact p_t, closed-form Gaussian consistency function, 2D data
* :mod:`cmlite.parameterization`  f_theta with the boundary condition (skip / piecewise), the EDM denoiser
* :mod:`cmlite.nets`            networks (an MLP with a time embedding)
* :mod:`cmlite.losses`          CD (Algorithm 2), CT (Algorithm 3), improved CT; distances and weightings
* :mod:`cmlite.continuous`      continuous-time CD / CT (forward-mode tangents), sCM (TrigFlow), ECT
* :mod:`cmlite.teacher`         denoising score matching for a diffusion teacher
* :mod:`cmlite.training`        the one training loop (online / target / EMA networks, checkpoints)
* :mod:`cmlite.sampling`        one-step and multistep sampling (Algorithm 1), ternary search of time points
* :mod:`cmlite.editing`         zero-shot editing (Algorithm 4)
* :mod:`cmlite.metrics`         sample-quality metrics for low-dimensional data
"""
from .schedules import (EPS, RHO, SIGMA_DATA, T_MAX, CTSchedule, ECTSchedule, FixedSchedule, ICTSchedule, Refitted,
                        TangentWarmupSchedule, ct_mu, ct_N, ect_N, ict_N, karras_boundaries, lognormal_index_probs,
                        max_gap)
from .ode import euler_step, heun_step, pf_ode_drift, reference_solve, score_to_denoiser, solve
from .toys import EmpiricalDenoiser, Gaussian, GaussianMixture, ring_mixture, toy_2d, TOY_NAMES
from .parameterization import (AdaptiveWeight, ConsistencyModel, EDMDenoiser, edm_to_trigflow, get_scalings,
                               trigflow_to_edm)
from .nets import MLP
from .losses import (ConsistencyDistillationLoss, ConsistencyTrainingLoss, ImprovedConsistencyTrainingLoss,
                     PseudoHuber, l1, l2, lambda_weight)
from .continuous import (ContinuousCDLoss, ContinuousCTLoss, ECTLoss, SCDLoss, SCMLoss, SCTLoss,
                         consistency_tangent, ect_pair)
from .teacher import DenoisingScoreMatchingLoss
from .training import Trainer, TrainConfig, ema_update
from .sampling import multistep_sample, ode_sample, sample, ternary_search_times

__version__ = "0.1.0"
