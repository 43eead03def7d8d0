"""How the archive names and lays out a chunk: its key, a hash of the whole token prefix up to
its end (see :mod:`simkv_engine.archive`); the model fingerprint that keeps different models'
chunks apart in one bucket; and the :class:`ChunkFormat` (dtype, shape, chunk size, model) a
stored chunk must match to be loaded, with its conversions between a tensor and raw bytes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from simkv_engine.models import KVShape

FORMAT_VERSION = "1"
_MASK64 = (1 << 64) - 1


def chunk_hashes(tokens: Sequence[int], chunk_size: int) -> list[int]:
    """The archive's uint64 hashes of the full chunks of ``tokens`` (see the package docstring)."""
    out: list[int] = []
    prev = 0
    arr = np.asarray(tokens, dtype="<u4")
    for lo in range(0, len(arr) // chunk_size * chunk_size, chunk_size):
        digest = hashlib.blake2b(prev.to_bytes(8, "little") + arr[lo:lo + chunk_size].tobytes(),
                                 digest_size=8).digest()
        prev = int.from_bytes(digest, "little") & _MASK64
        out.append(prev)
    return out


def model_fingerprint(model: torch.nn.Module, kv: KVShape, chunk_size: int) -> str:
    """16 hex digits identifying what a chunk's KV depends on: the KV layout and dtype, the chunk
    size, the config's shape keys, and the first 64 values of every parameter (tells two
    checkpoints, or two seeds, of one shape apart without hashing gigabytes)."""
    cfg = model.config
    h = hashlib.blake2b(digest_size=8)
    desc = {"layers": kv.layers, "kv_heads": kv.kv_heads, "head_dim": kv.head_dim, "dtype": str(kv.dtype),
            "chunk_size": chunk_size, "model_type": getattr(cfg, "model_type", ""),
            "vocab_size": getattr(cfg, "vocab_size", 0), "hidden_size": getattr(cfg, "hidden_size", 0)}
    h.update(json.dumps(desc, sort_keys=True).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ChunkFormat:
    """What a stored chunk must match to be loaded: dtype, shape, chunk size, model."""

    dtype: str
    shape: tuple[int, ...]
    chunk_size: int
    model: str

    @classmethod
    def of(cls, kv: KVShape, chunk_size: int, model: str) -> ChunkFormat:
        return cls(str(kv.dtype).removeprefix("torch."), (2, kv.layers, chunk_size, kv.kv_heads, kv.head_dim),
                   chunk_size, model)

    @property
    def raw_bytes(self) -> int:
        return int(np.prod(self.shape)) * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()

    def meta(self) -> dict[str, str]:
        return {"dtype": self.dtype, "shape": ",".join(map(str, self.shape)),
                "chunk-size": str(self.chunk_size), "model": self.model, "version": FORMAT_VERSION}

    def mismatch(self, meta: dict[str, str]) -> str | None:
        """The first layout field of ``meta`` that differs from this format, or ``None``."""
        for k, v in self.meta().items():
            if meta.get(k) != v:
                return f"{k} is {meta.get(k)!r}, this engine's is {v!r}"
        return None

    def to_bytes(self, chunk: torch.Tensor) -> bytes:
        """A chunk tensor (``shape``, any device) as raw bytes, C order."""
        return chunk.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    def to_tensor(self, raw: bytes, device: torch.device) -> torch.Tensor:
        t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(getattr(torch, self.dtype))
        return t.view(self.shape).to(device)
