"""Architecture search: search spaces as data, weight-sharing supernets, the disturbance-immune
update (DI-NAS), a zero-cost score (NASWOT), random and evolutionary search under MAC / parameter /
measured-latency budgets.

``create_model("nas", spec="nb201:|nor_conv_3x3~0|+...")`` builds any architecture standalone.
"""
from slimkit.nas import cells, mobile  # noqa: F401  (register the spaces)
from slimkit.nas.di import DIConfig, DisturbanceImmune
from slimkit.nas.space import Arch, Choice, SearchSpace, get_space, list_spaces, parse_spec, register_space
from slimkit.nas.supernet import (ArchEvaluator, SupernetConfig, SupernetTrainer, accuracy, recalibrate_bn)
from slimkit.nas.zero_cost import naswot


def build_arch(spec, num_classes=10):
    """The standalone network of ``spec`` (string, dict, JSON path or Arch)."""
    arch = parse_spec(spec)
    return get_space(arch.space, **dict(arch.options)).build(arch, num_classes)


__all__ = ["Arch", "ArchEvaluator", "Choice", "DIConfig", "DisturbanceImmune", "SearchSpace", "SupernetConfig",
           "SupernetTrainer", "accuracy", "build_arch", "get_space", "list_spaces", "naswot", "parse_spec",
           "recalibrate_bn", "register_space"]
