"""What differs between the transformers versions trilm supports (5.23 to the newest 5.x), in one place.

transformers 5.24 renamed the cache argument of model forwards, of `masking_utils` and the cache field of
the output dataclasses from `past_key_values` to `cache` (the old name stays a deprecated alias until 5.40).
trilm's forwards take the cache as `cache` and accept `past_key_values` as well, on every version; what trilm
passes to transformers uses the installed version's name, so no deprecation warning comes from trilm.
"""

import functools
import warnings
from collections.abc import Callable

import torch

from transformers.modeling_outputs import BaseModelOutputWithPast

# The installed transformers' name for the cache: its outputs' field, `masking_utils`' and `generate`'s argument.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwarg(cache) -> dict:
    """`{name: cache}` under the installed transformers' name, to pass to `masking_utils`, output dataclasses
    and layers (`GradientCheckpointingLayer` drops a cache it finds under that name while checkpointing)."""
    return {CACHE_NAME: cache}


def output_cache(outputs):
    """The cache held by a transformers output dataclass, read under the installed version's field name."""
    return getattr(outputs, CACHE_NAME)


def accepts_cache_alias(forward: Callable) -> Callable:
    """Let a `forward` whose cache parameter is `cache` also take it as `past_key_values` (transformers before
    5.24, and user code written for it). Where the installed transformers has renamed it (5.24 and later), the
    old name raises a FutureWarning naming `cache`, as Llama's `deprecate_kwarg` does (not while compiling)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if "past_key_values" in kwargs:
            if CACHE_NAME == "cache" and not torch.compiler.is_compiling():
                warnings.warn(f"`past_key_values` is deprecated for `{type(self).__name__}.forward` since transformers 5.24 "
                              "and will be removed in 5.40.0. Use `cache` instead.", FutureWarning, stacklevel=2)
            legacy = kwargs.pop("past_key_values")
            if legacy is not None and kwargs.get("cache") is not None:
                raise ValueError("Pass the cache once, as `cache` or as `past_key_values`, not as both.")
            if legacy is not None:
                kwargs["cache"] = legacy
        return forward(self, *args, **kwargs)

    return wrapper
