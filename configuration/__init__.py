"""trilm.configuration: one config vocabulary for the three model families."""

from .configuration_trilm import TrilmConfig, TrilmDecoderConfig

__all__ = ["TrilmConfig", "TrilmDecoderConfig"]
