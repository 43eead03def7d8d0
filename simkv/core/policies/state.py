"""Policy state: what a TTL heuristic sees and the archive worker's candidate rule, keyed by block hash.

One object holds the access history of every block (how many requests referenced it, the
class of the first), the per-class reuse learner (:class:`~simkv.core.policies.ttl.ClassReuse`),
the candidates since the last archive pass (each block's last request and position), and
prices, and it makes the two decisions a policy makes: a block's TTL (:meth:`ttl_for`) and
what an archive pass does with its candidates (:meth:`decide_pass`). The simulator's engines
and a real engine's archive worker feed it the same events, so a policy chosen in simulation
makes the same decisions when deployed. NumPy only: no simulator on this import path.

Events (hashes are the blocks' uint64 content hashes, in prompt order)::

    r = state.request(prompt_class, input_tokens)   # a request, numbered
    state.accessed(hashes, r)       # after its lookup: a request never counts itself
    state.stored(hashes) / state.evicted(hashes)    # the engine's GPU/disk tiers hold them
    state.archived(hashes, deadlines)               # objects landed or got a new deadline
    state.expired(hashes)
    decision = state.decide_pass(now)               # uploads, refreshes, skips

Inside, blocks have dense ids and the state is arrays indexed by id (the compiled engine's
kernels update them in place); the hash → id map is at the boundary. The simulator passes
its dense ids and the hash of each id once, and the archive and GPU/disk membership of its
own tiers to :meth:`decide_pass`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simkv.core.policies.ttl import ClassReuse, TTLContext, TTLHeuristic

#: ``value_s(positions, input_tokens)``: GPU seconds one reuse of a block saves (the hardware
#: profile's ``block_value_s`` for the trace's block size); scalars or arrays.
ValueFn = Callable[[Any, Any], Any]
Mask = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class PassDecision:
    """One archive pass over its candidates: the blocks referenced since the last pass, in
    first-seen order, each with its last request and its position in that prompt.

    A candidate live in the archive is refreshed when TTLs slide (new deadline ``now +
    refresh_ttl``); one not archived but still held by the GPU or disk tier is uploaded
    (deadline ``now + upload_ttl`` once it lands); the others are skipped (gone before the
    worker came). ``upload_ttl``/``upload_priority`` are for ``blocks[upload]``,
    ``refresh_ttl`` for ``blocks[refresh]``.
    """

    blocks: np.ndarray
    requests: np.ndarray
    positions: np.ndarray
    upload: np.ndarray
    refresh: np.ndarray
    upload_ttl: np.ndarray
    upload_priority: np.ndarray
    refresh_ttl: np.ndarray
    skipped: int


class PolicyState:
    """The policy's view of the blocks (see the module docstring)."""

    def __init__(self, heuristic: TTLHeuristic | None, *, block_tokens: int, block_bytes: int,
                 archive_bytes: int, gpu_cost_per_s: float, archive_cost_per_byte_s: float,
                 sliding: bool, value_s: ValueFn, hashes: np.ndarray | None = None) -> None:
        self.heuristic = heuristic
        self.block_tokens = block_tokens
        self.block_bytes = block_bytes
        self.archive_bytes = archive_bytes
        self.gpu_cost_per_s = gpu_cost_per_s
        self.archive_cost_per_byte_s = archive_cost_per_byte_s
        self.sliding = sliding
        self.value_s = value_s
        n = 0 if hashes is None else len(hashes)
        self.n_blocks = n
        self._index: dict[int, int] | None = None  # hash -> id, built on first use
        cap = n if hashes is not None else 64
        self.hashes = np.zeros(cap, np.uint64) if hashes is None else np.asarray(hashes, np.uint64)
        #: Per block: requests that referenced it so far, and the class code of the first.
        self.refs = np.zeros(cap, np.int32)
        self.first_class = np.zeros(cap, np.int32)
        #: Candidates: rows last request, last position, pass stamp, and the pass's blocks
        #: in first-seen order (the first ``pc[0]``); ``pc[1]`` numbers the pass.
        self.pend = np.zeros((4, cap), np.int32)
        self.pend[2] = -1
        self.pc = np.zeros(2, np.int64)
        # A worker's own view of its tiers (the simulator passes its tiers' instead).
        self.held = np.zeros(cap, np.bool_)
        self.deadline = np.full(cap, -np.inf)
        #: Per class code: blocks first referenced by that class, and of those referenced again.
        self.class_names: list[str] = []
        self._codes: dict[str, int] = {}
        self.reuse_counts = np.zeros((2, 1), np.int64)
        self.req_class = np.zeros(64, np.int64)
        self.req_tokens = np.zeros(64, np.int64)
        self.n_requests = 0

    # -- requests and ids -----------------------------------------------------------------

    def add_requests(self, codes: np.ndarray, names: Sequence[str], input_tokens: np.ndarray) -> None:
        """Register requests ``0..len(codes)-1`` at once (the simulator: the whole trace), by
        class code into ``names``; replaces any registered before."""
        self.class_names = [str(c) for c in names]
        self._codes = {c: i for i, c in enumerate(self.class_names)}
        self.reuse_counts = np.zeros((2, max(len(names), 1)), np.int64)
        self.req_class = np.ascontiguousarray(codes, dtype=np.int64)
        self.req_tokens = np.asarray(input_tokens)
        self.n_requests = len(codes)

    def request(self, prompt_class: str, input_tokens: int) -> int:
        """Register one request; returns its number (what :meth:`accessed` takes)."""
        code = self._codes.get(prompt_class)
        if code is None:
            code = self._codes[prompt_class] = len(self.class_names)
            self.class_names.append(prompt_class)
            if code >= self.reuse_counts.shape[1]:
                self.reuse_counts = np.concatenate([self.reuse_counts, np.zeros_like(self.reuse_counts)], 1)
        r = self.n_requests
        if r == len(self.req_class):
            self.req_class = np.concatenate([self.req_class, np.zeros_like(self.req_class)])
            self.req_tokens = np.concatenate([self.req_tokens, np.zeros_like(self.req_tokens)])
        self.req_class[r] = code
        self.req_tokens[r] = input_tokens
        self.n_requests = r + 1
        return r

    def ids(self, hashes: Any) -> np.ndarray:
        """Dense ids of ``hashes`` (uint64), a new id for each hash not seen before."""
        if self._index is None:
            self._index = dict(zip(self.hashes[: self.n_blocks].tolist(), range(self.n_blocks),
                                   strict=True))
        index = self._index
        out = []
        for h in np.asarray(hashes, np.uint64).tolist():
            i = index.get(h)
            if i is None:
                i = index[h] = self.n_blocks
                self._grow(i + 1)
                self.hashes[i] = h
                self.n_blocks = i + 1
            out.append(i)
        return np.array(out, np.int64)

    def _grow(self, need: int) -> None:
        cap = len(self.refs)
        if need <= cap:
            return
        extra = max(need, 2 * cap, 64) - cap

        def more(a: np.ndarray, fill: Any = 0) -> np.ndarray:
            pad = np.full((*a.shape[:-1], extra), fill, a.dtype)
            return np.concatenate([a, pad], axis=-1)

        self.hashes, self.refs, self.first_class = more(self.hashes), more(self.refs), more(self.first_class)
        self.held, self.deadline = more(self.held, False), more(self.deadline, -np.inf)
        pend = more(self.pend)
        pend[2, cap:] = -1
        self.pend = pend

    # -- events ---------------------------------------------------------------------------

    def accessed(self, hashes: Any, request: int) -> None:
        """Request ``request`` referenced ``hashes`` (its prompt's blocks, in order)."""
        self.accessed_ids(self.ids(hashes).tolist(), request)

    def accessed_ids(self, ids: Sequence[int], request: int) -> None:
        """:meth:`accessed` by dense id: count the reference, teach the reuse learner (a
        block's first reference counts for its class, its second as a reuse of the class
        of the first), and make each block a candidate of the next pass."""
        refs, first = memoryview(self.refs), memoryview(self.first_class)
        seen, reused = memoryview(self.reuse_counts[0]), memoryview(self.reuse_counts[1])
        last_r, last_pos, stamps, order = (memoryview(row) for row in self.pend)
        count, stamp = int(self.pc[0]), int(self.pc[1])
        cls = int(self.req_class[request])
        for pos, b in enumerate(ids):
            n = refs[b]
            if n == 0:
                seen[cls] += 1
                first[b] = cls
            elif n == 1:
                reused[first[b]] += 1
            refs[b] = n + 1
            if stamps[b] != stamp:
                stamps[b] = stamp
                order[count] = b
                count += 1
            last_r[b] = request
            last_pos[b] = pos
        self.pc[0] = count

    def stored(self, hashes: Any) -> None:
        """The engine's GPU or disk tier holds ``hashes`` (the worker can read them)."""
        ids = self.ids(hashes)  # first: it may grow the arrays
        self.held[ids] = True

    def evicted(self, hashes: Any) -> None:
        """Neither the GPU nor the disk tier holds ``hashes`` any more."""
        ids = self.ids(hashes)  # first: it may grow the arrays
        self.held[ids] = False

    def archived(self, hashes: Any, deadlines: Any) -> None:
        """Archive objects of ``hashes`` landed or were refreshed; they expire at ``deadlines``."""
        ids = self.ids(hashes)  # first: it may grow the arrays
        self.deadline[ids] = deadlines

    def expired(self, hashes: Any) -> None:
        """The archive objects of ``hashes`` are gone (expired or evicted)."""
        ids = self.ids(hashes)  # first: it may grow the arrays
        self.deadline[ids] = -np.inf

    # -- decisions ------------------------------------------------------------------------

    @property
    def reuse(self) -> ClassReuse:
        """The reuse learner's counts as a :class:`ClassReuse` (what heuristics see)."""
        names = self.class_names
        seen, reused = self.reuse_counts.tolist()
        return ClassReuse({names[c]: v for c, v in enumerate(seen) if v},
                          {names[c]: v for c, v in enumerate(reused) if v})

    def _heuristic(self) -> TTLHeuristic:
        if self.heuristic is None:
            raise ValueError("no TTL heuristic: ttl.heuristic is 'none'")
        return self.heuristic

    def ttl_one(self, block: int, request: int, position: int, now: float, stored_bytes: int,
                cost_per_byte_s: float) -> tuple[float, float]:
        """TTL and priority of one block (by id) kept as ``stored_bytes`` at ``cost_per_byte_s``,
        last referenced by ``request`` at ``position``."""
        tokens = int(self.req_tokens[request])
        ctx = TTLContext(
            now=now, block=block, position=position,
            prompt_class=self.class_names[self.req_class[request]], input_tokens=tokens,
            access_count=max(int(self.refs[block]) - 1, 0), block_tokens=self.block_tokens,
            block_bytes=self.block_bytes, stored_bytes=stored_bytes,
            value_s=self.value_s(position, tokens), gpu_cost_per_s=self.gpu_cost_per_s,
            storage_cost_per_byte_s=cost_per_byte_s, reuse=self.reuse,
        )
        return self._heuristic()(ctx)

    def ttl_batch(self, blocks: np.ndarray, requests: np.ndarray, positions: np.ndarray,
                  now: float) -> tuple[np.ndarray, np.ndarray]:
        """Archive TTLs and priorities of ``blocks`` (ids) last referenced by ``requests`` at
        ``positions``: one heuristic context for all of them."""
        tokens = self.req_tokens[requests]
        counts = self.refs[blocks].astype(np.int64)
        ctx = TTLContext(
            now=now, block=blocks, position=positions,
            prompt_class=np.asarray(self.class_names, dtype=object)[self.req_class[requests]],
            input_tokens=tokens, access_count=np.maximum(counts - 1, 0),
            block_tokens=self.block_tokens, block_bytes=self.block_bytes,
            stored_bytes=self.archive_bytes, value_s=self.value_s(positions, tokens),
            gpu_cost_per_s=self.gpu_cost_per_s, storage_cost_per_byte_s=self.archive_cost_per_byte_s,
            reuse=self.reuse,
        )
        return self._heuristic().batch(ctx)

    def ttl_for(self, hashes: Any, request: int, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Archive TTLs and priorities of a request's blocks ``hashes`` (prompt order) at ``now``."""
        ids = self.ids(hashes)
        return self.ttl_batch(ids, np.full(len(ids), request, np.int64), np.arange(len(ids)), now)

    def take_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The candidates since the last pass (ids, last request, position), in first-seen
        order; starts a new pass."""
        ids = self.pend[3, : self.pc[0]].astype(np.int64)
        self.pc[0] = 0
        self.pc[1] += 1
        return ids, self.pend[0, ids].astype(np.int64), self.pend[1, ids].astype(np.int64)

    def decide_pass(self, now: float, archived: Mask | None = None,
                    held: Mask | None = None) -> PassDecision:
        """The archive worker's pass at ``now`` (see :class:`PassDecision`); starts a new pass.
        ``archived``/``held`` say which ids are live in the archive / held by the GPU or disk
        tier; by default this state's own record of the events (an object is live while
        its deadline is after ``now``). The heuristic sees one context per kind (nothing it
        reads changes during a pass): the refreshes', then the uploads'."""
        blocks, rs, pos = self.take_pending()
        n = len(blocks)
        none = np.zeros(0)
        if n == 0:
            empty = np.zeros(0, np.bool_)
            return PassDecision(blocks, rs, pos, empty, empty, none, none, none, 0)
        live = archived(blocks) if archived is not None else self.deadline[blocks] > now
        upload = ~live & (held(blocks) if held is not None else self.held[blocks])
        skipped = int(n - live.sum() - upload.sum())
        refresh = live if self.sliding else np.zeros(n, np.bool_)
        refresh_ttl = (self.ttl_batch(blocks[refresh], rs[refresh], pos[refresh], now)[0]
                       if refresh.any() else none)
        ttl, prio = (self.ttl_batch(blocks[upload], rs[upload], pos[upload], now) if upload.any()
                     else (none, none))
        return PassDecision(blocks, rs, pos, upload, refresh, np.asarray(ttl, np.float64),
                            np.asarray(prio, np.float64), np.asarray(refresh_ttl, np.float64), skipped)
