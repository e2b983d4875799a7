"""Gradient compression for data-parallel training on torch.distributed.

``create_compressor("ecq", bits=2)``, ``list_compressors()``, ``parse_compressor("ecq(bits=2)")``,
``register(ddp_model, compressor) -> CommState`` (a DDP communication hook). LPC-SVRG / ALPC-SVRG
for convex composite problems moved to ``slimkit.train.lpc_svrg``. Importing this package does not
initialise torch.distributed.
"""
from slimkit.comm._registry import create_compressor, list_compressors, parse_compressor, register_compressor
from slimkit.comm.base import Compressor
from slimkit.comm.hook import BUILTIN_HOOKS, CommState, register

__all__ = ["BUILTIN_HOOKS", "CommState", "Compressor", "create_compressor", "list_compressors",
           "parse_compressor", "register", "register_compressor"]
