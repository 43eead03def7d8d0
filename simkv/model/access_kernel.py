"""The compiled twin of :meth:`simkv.core.policies.state.PolicyState.accessed_ids`.

The compiled engine records each request's access history in the policy state's own arrays
from inside its ``finish`` kernel (no Python call per request); this is that loop, statement
for statement as in the state, so both engines feed the shared decision rule the same
history (a property test holds the engines to identical results).
"""

from __future__ import annotations

import numpy as np

from simkv.jit import njit


@njit(cache=True)
def record_access(ids: np.ndarray, request: int, cls: int, refs: np.ndarray, first_class: np.ndarray,
                  reuse: np.ndarray, pend: np.ndarray, pc: np.ndarray) -> None:
    """Request ``request`` (class code ``cls``) referenced ``ids`` in prompt order."""
    count = pc[0]
    stamp = pc[1]
    for pos in range(ids.shape[0]):
        b = ids[pos]
        n = refs[b]
        if n == 0:
            reuse[0, cls] += 1
            first_class[b] = cls
        elif n == 1:
            reuse[1, first_class[b]] += 1
        refs[b] = n + 1
        if pend[2, b] != stamp:
            pend[2, b] = stamp
            pend[3, count] = b
            count += 1
        pend[0, b] = request
        pend[1, b] = pos
    pc[0] = count
