"""The hardware profile: every time the simulator charges, and a block's value, from one place.

A profile answers three questions, vectorised where the metrics need many answers at once:

* ``prefill(n, c)``: seconds to prefill ``n`` new tokens after ``c`` cached ones (at least
  one token is always computed, so ``n`` is ``max(n, 1)``);
* the transfer times (:class:`Transfers`): per-request and per-block load time of the CPU,
  disk and archive tiers (and of GPU hits: nothing, unless a table profile measured the
  engine's GPU-cache copy as ``load.gpu``), CPU and disk write time per block, and the
  archive worker's compress + upload time per block;
* what a request costs besides its loads and prefill (:class:`RequestOverhead`: a table
  profile's optional ``request`` section, nothing otherwise);
* a block's value (:meth:`HardwareProfile.block_value_s`): the GPU time one reuse of it saves,
  defined from ``prefill`` alone so that it agrees with what the engine charges;
* the archive's compression ratio (:meth:`HardwareProfile.compression_ratio`): the scenario's
  ``tiers.archive.compression_ratio`` unless a table profile carries a measured one.

Two kinds are registered by name (:data:`PROFILES`): ``analytic`` (the fitted formula of the
scenario's ``hardware.prefill_*`` keys, transfer times from the tiers' bandwidths) and
``table`` (a measured profile file, ``hardware.profile: profiles/NAME.yaml``; format in
docs/system.md, "Hardware profiles"). ``hardware.zero_service_time`` makes every time zero
whatever the profile.

The modules: :mod:`.base` (the interface, its value types and the registry),
:mod:`.analytic`, :mod:`.table` (the two kinds) and :mod:`.file` (reading, validating and
writing a profile file).
"""

from simkv.core.profiles.analytic import AnalyticProfile
from simkv.core.profiles.base import (
    GB,
    OPTIONAL_TIERS,
    PROFILE_VERSION,
    PROFILES,
    REQUEST_KEYS,
    STEP_KEYS,
    HardwareProfile,
    RequestOverhead,
    StepTime,
    Transfers,
)
from simkv.core.profiles.file import load_profile, table_from_profile, validate_table
from simkv.core.profiles.table import TableProfile, bilinear

__all__ = [
    "GB",
    "OPTIONAL_TIERS",
    "PROFILES",
    "PROFILE_VERSION",
    "REQUEST_KEYS",
    "STEP_KEYS",
    "AnalyticProfile",
    "HardwareProfile",
    "RequestOverhead",
    "StepTime",
    "TableProfile",
    "Transfers",
    "bilinear",
    "load_profile",
    "table_from_profile",
    "validate_table",
]
