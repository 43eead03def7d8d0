"""``simkv calibrate``: measure the engine through the path requests take and write a
``kind: table`` hardware profile (docs/system.md, "Calibrating a profile").

A :class:`Probe` serves token-id prompts and reports the engine's own per-request times
(``load_s``, ``prefill_s``, ``store_s``, ``hydrate_s``) and tokens per tier; it can clear local
tiers and look up where a prompt's chunks are. Two probes: :class:`InProcessProbe` (the model
and :class:`~simkv_engine.engine.KVEngine` built from a scenario, as the server builds them) and
:class:`HTTPProbe` (a running ``simkv engine serve``, docs in the API contract: completions
with ``max_tokens: 0``, ``/kv/lookup``, ``/kv/clear``; ``/kv/archive`` and ``/metrics`` for the
archive). Both end in ``KVEngine.serve``. A server without ``/kv/lookup`` (404: vLLM) gets a
:class:`VLLMProbe`: the prefill grid only, timed at the client (:class:`VLLMProbe` says what and why).

Measurements (each a median over ``repeats`` after ``warmup`` discarded runs, every run on a
fresh random prompt from ``numpy.random.default_rng(seed)`` so nothing hits by accident; the
lookup before each timed run checks the chunks are exactly where the measurement needs them):

* prefill seconds over ``new × cached``: the cached prefix is served first (so its chunks sit
  in the GPU cache), then prefix + new tokens; ``prefill_s`` as the engine reports it.
* load seconds vs chunks per tier: ``gpu`` (GPU-cache copy), ``cpu`` (LMCache CPU),
  ``disk_cold`` and ``disk_warm`` (LMCache disk; what cold means: :attr:`Probe.disk_cold`);
  fitted ``load = per_request_s + chunks·per_block_s`` (least squares, both >= 0).
* store: ``store_s`` of the run that computed the chunks (GPU cache + LMCache CPU copy) and,
  with a disk tier, the time from the run's end until LMCache's asynchronous disk writes are
  done; the per-chunk slope of each; and ``store_s`` of the run that loaded them from the CPU
  tier (their copy into the GPU cache: ``admit``).
* the archive, where the engine has one (:func:`_measure_archive`): a request's chunks are
  uploaded by an archive pass the probe triggers, the local tiers cleared, and the request
  served again from the archive alone: ``archive`` is its ``load_s`` (fetch + verify +
  decompress + copy), fitted like the other loads; the pass's compress + upload seconds per
  chunk, the uploads' raw / stored bytes (the codec's ratio on the model's real KV), and the
  compress and decompress speeds from the archive's counters.
* the request overhead (the profile's ``request`` section, what a request costs besides its
  loads, prefill and stores): on fresh prompts of every grid length, served as the replay sends
  them (:meth:`Probe.serve_timed`), the worker's rest ``ttft − queue − load − prefill − store``
  fitted against the prompt's chunks, and (over HTTP) the latency outside the worker, the
  client's TTFT minus the server's, fitted against its tokens.

The modules, by job: :mod:`.plan` (the grid, the plan, fresh prompts), :mod:`.probe` (the
probe interface), :mod:`.inprocess`, :mod:`.remote` and :mod:`.vllm_probe` (the probes),
:mod:`.measure` (the measurement), :mod:`.archive_measure` (the archive's), :mod:`.fits`,
:mod:`.document` (the profile document), :mod:`.step_times` (vLLM's step times) and
:mod:`.streams` (its decoding streams).
"""

from simkv.core.profiles import STEP_KEYS
from simkv_engine.calibrate.document import Calibration, write_profile
from simkv_engine.calibrate.fits import fit_analytic, fit_line, leave_one_out, nonneg_lstsq
from simkv_engine.calibrate.inprocess import CALIBRATION_TTL_S, InProcessProbe
from simkv_engine.calibrate.measure import calibrate, open_probe
from simkv_engine.calibrate.plan import (
    GRIDS,
    LOCAL_TIERS,
    CalibrationError,
    FreshPrompts,
    Plan,
    overhead_lengths,
    steps,
)
from simkv_engine.calibrate.probe import ARCHIVE_COUNTERS, Probe, Served
from simkv_engine.calibrate.remote import HTTPProbe
from simkv_engine.calibrate.step_times import (
    PREFILL_SUM,
    QUEUE_SUM,
    STEPS_COUNT,
    Latency,
    StepPlan,
    StepPoint,
    add_steps,
    fit_latency,
    fit_steps,
    measure_steps,
    step_features,
    step_runs,
)
from simkv_engine.calibrate.streams import START_WAIT_S, DecodingStreams, decode_gaps, metric_sum
from simkv_engine.calibrate.vllm_probe import VLLMProbe, http_probe

__all__ = [
    "ARCHIVE_COUNTERS", "CALIBRATION_TTL_S", "GRIDS", "LOCAL_TIERS", "PREFILL_SUM", "QUEUE_SUM",
    "START_WAIT_S", "STEPS_COUNT", "STEP_KEYS", "Calibration", "CalibrationError", "DecodingStreams",
    "FreshPrompts", "HTTPProbe", "InProcessProbe", "Latency", "Plan", "Probe", "Served", "StepPlan",
    "StepPoint", "VLLMProbe", "add_steps", "calibrate", "decode_gaps", "fit_analytic", "fit_latency",
    "fit_line", "fit_steps", "http_probe", "leave_one_out", "measure_steps", "metric_sum", "nonneg_lstsq",
    "open_probe", "overhead_lengths", "step_features", "step_runs", "steps", "write_profile",
]
