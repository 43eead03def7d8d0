"""vLLM's LMCache KV connector, made to work on vLLM's CPU build.

Started with ``--kv-transfer-config '{"kv_connector":"SimkvLMCacheConnectorV1",
"kv_connector_module_path":"simkv_engine.vllm_connector","kv_role":"kv_both"}'`` and LMCache's
configuration in ``LMCACHE_CONFIG_FILE``. It is vLLM's ``LMCacheConnectorV1`` (LMCache's own
adapter does the scheduling, lookups, stores and loads); the one difference is the GPU connector
LMCache's engine is built with: where LMCache runs on the CPU (``lmcache.torch_device_type ==
"cpu"``), :class:`~simkv_engine.vllm_paged.VLLMCPUPagedConnector` instead of LMCache's
``CreateGPUConnector``, which has none for the CPU and leaves LMCache degraded (recompute). On
CUDA and LMCache's other devices, LMCache's own connector is used unchanged.

LMCache's vLLM service factory imports ``CreateGPUConnector`` from
``lmcache.v1.gpu_connector`` when it builds the engine, so the connector installs a wrapper
there before LMCache starts; the wrapper defers to LMCache's function for every other case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lmcache
import lmcache.v1.gpu_connector as lmcache_gpu_connectors
from lmcache.utils import EngineType
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.gpu_connector.utils import LayoutHints
from lmcache.v1.metadata import LMCacheMetadata
from vllm.distributed.kv_transfer.kv_connector.v1.lmcache_connector import LMCacheConnectorV1

from simkv_engine.vllm_paged import VLLMCPUPagedConnector

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.v1.kv_cache_interface import KVCacheConfig

_lmcache_create = lmcache_gpu_connectors.CreateGPUConnector


def create_gpu_connector(config: LMCacheEngineConfig, metadata: LMCacheMetadata, engine: EngineType,
                         layout_hints: LayoutHints | None = None) -> GPUConnectorInterface:
    """LMCache's ``CreateGPUConnector``, with vLLM's CPU paged cache added."""
    if engine != EngineType.VLLM or lmcache.torch_device_type != "cpu":
        return _lmcache_create(config, metadata, engine, layout_hints)
    for flag in ("use_layerwise", "enable_blending", "use_gpu_connector_v3"):
        if getattr(config, flag, False):
            raise ValueError(f"LMCache's {flag}: not supported on vLLM's CPU build; set it to false")
    return VLLMCPUPagedConnector.from_metadata(metadata)


class SimkvLMCacheConnectorV1(LMCacheConnectorV1):
    """vLLM's LMCache connector with a GPU connector for vLLM's CPU paged KV cache."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig) -> None:
        lmcache_gpu_connectors.CreateGPUConnector = create_gpu_connector
        super().__init__(vllm_config, role, kv_cache_config)
