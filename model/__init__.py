"""Meta Networks (Munkhdalai & Yu, ICML 2017) in PyTorch."""

from model.config import MetaNetConfig
from model.metanet import MetaNet

__all__ = ["MetaNet", "MetaNetConfig"]
