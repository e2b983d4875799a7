"""Moved to ``slimkit.train.lpc_svrg`` (a convex solver with its own data loader, not a gradient compressor);
this path stays as a shim that warns."""
import warnings

from slimkit.train.lpc_svrg import SVRGConfig, SVRGResult, digits_binary, logistic_l1_objective, lpc_svrg  # noqa: F401

warnings.warn("slimkit.comm.lpc_svrg moved to slimkit.train.lpc_svrg; import it from there", FutureWarning,
              stacklevel=2)
