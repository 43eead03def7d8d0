"""The engine's model: a named Llama shape with seeded random weights built in place (no
downloads; prefill cost does not depend on weight values), or a local checkpoint folder.

The KV shape the tiers move is read from the model's config, never from the scenario's
``model`` block (that one describes the simulated model): ``bytes_per_token = 2 * layers *
kv_heads * head_dim * dtype_bytes`` (K and V)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from simkv.core.errors import SimkvError


class ModelError(SimkvError):
    """An unknown model shape, or a checkpoint folder that cannot be loaded."""


#: Named shapes: LlamaConfig keyword arguments. ``tiny`` is for CPU tests (``tiny-vllm`` for vLLM's
#: CPU build); ``tiny-long`` is
#: ``tiny`` with a 131072-token context, for CPU replays of long real traces (Mooncake prompts:
#: attention makes a prefill quadratic in its length, about 10 s for 32768 tokens on one CPU
#: core); ``llama-1b`` and ``llama-8b`` are the Llama-3.2-1B and Llama-3-8B shapes the H100
#: prefill profile was measured on.
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(_TINY, max_position_embeddings=4096),
    # tiny for vLLM's CPU attention, which refuses head_dim 16: 2 layers x 1 KV head x 64 dims x
    # K,V in bfloat16 = 512 bytes per token, as tiny's in float32; Llama-2's vocabulary size.
    "tiny-vllm": dict(_TINY, vocab_size=32000, hidden_size=128, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=64, max_position_embeddings=4096),
    "tiny-long": dict(_TINY, max_position_embeddings=131072),
    # the batching fidelity study on vLLM's CPU build (reports/fidelity/cpu-batch.yaml): large
    # enough that a step's compute, not vLLM's per-step Python, sets its time; 4 layers x 8 KV
    # heads x 64 dims x K,V in bfloat16 = 8,192 bytes per token.
    "cpu-512": dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=8, head_dim=64, max_position_embeddings=4096),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                     max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True),
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     max_position_embeddings=131072, rope_theta=500000.0),
}


@dataclass(frozen=True)
class KVShape:
    """The KV cache of one token across the model: per layer a K and a V of
    ``kv_heads x head_dim`` elements of ``dtype``."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def dtype_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def chunk_bytes(self, chunk_size: int) -> int:
        return chunk_size * self.bytes_per_token

    def lmcache_kv_shape(self, chunk_size: int) -> tuple[int, int, int, int, int]:
        """LMCache's ``LMCacheMetadata.kv_shape``: ``(layers, 2, chunk_size, kv_heads, head_dim)``."""
        return (self.layers, 2, chunk_size, self.kv_heads, self.head_dim)


def kv_shape_of(model: PreTrainedModel) -> KVShape:
    """The KV shape from the model's config (``head_dim`` defaults to hidden / heads)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return KVShape(cfg.num_hidden_layers, kv_heads, head_dim, model.dtype)


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU (what the measured H100 timings use), float32 on the CPU (exact and fast there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(spec: str, device: str | torch.device = "cpu", *, dtype: torch.dtype | None = None,
               seed: int = 0) -> PreTrainedModel:
    """A causal LM in eval mode on ``device``: ``spec`` is a name in :data:`SHAPES` (random
    weights from ``seed``) or the path of a local checkpoint folder (``local_files_only``).
    Attention is ``sdpa``."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if spec in SHAPES:
        config = LlamaConfig(**SHAPES[spec])
        config._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
    else:
        path = Path(spec)
        if not path.is_dir():
            raise ModelError(f"model {spec!r}: neither a shape ({', '.join(SHAPES)}) "
                             "nor a checkpoint folder")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                         attn_implementation="sdpa").to(device)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {spec}: cannot load the checkpoint: {exc}") from None
    return model.eval()


def config_folder(spec: str, root: Path, dtype: str = "bfloat16") -> Path:
    """A model folder another engine (vLLM with ``--load-format dummy``) can load: for a shape of
    :data:`SHAPES`, ``root/SHAPE/config.json`` written from it (a Llama architecture in
    ``dtype``); else ``spec`` itself, which must be a folder with a ``config.json``."""
    if spec in SHAPES:
        folder = root / spec
        folder.mkdir(parents=True, exist_ok=True)
        config = LlamaConfig(**SHAPES[spec], architectures=["LlamaForCausalLM"], torch_dtype=dtype)
        config.to_json_file(str(folder / "config.json"))
        return folder
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ModelError(f"model {spec!r}: neither a shape ({', '.join(SHAPES)}) nor a folder "
                         "with a config.json")
    return path
