"""trilm.configuration: one config vocabulary for the three model families."""

from .configuration_trilm import TrilmConfig, TrilmDecoderConfig, TrilmEncoderConfig, TrilmSeq2SeqConfig

__all__ = ["TrilmConfig", "TrilmDecoderConfig", "TrilmEncoderConfig", "TrilmSeq2SeqConfig"]
