"""The README's end-to-end flow as a user runs it, every step a real ``simkv`` command in a
subprocess: ``simkv sweep`` over a small grid on the canned engine trace → ``winner.yaml`` →
``simkv engine serve winner.yaml`` (the tiny model on the CPU, real LMCache CPU + disk tiers) and
``simkv calibrate`` against it → a fresh ``simkv engine serve winner.yaml`` with the archive in
a bucket of moto's S3 server on 127.0.0.1 → ``simkv replay`` of the trace through it →
``simkv run`` of the winner with the calibrated profile → ``simkv validate`` → ``simkv report``
of the replay. Checks that each step's files
exist and hold what the next step needs, and what the simulator and the engine must agree on
today (see :func:`test_sweep_to_fidelity_report`)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, SIMKV

pytest.importorskip("torch", reason="the engine needs torch (make install)")
pytest.importorskip("lmcache.v1.standalone.manager", reason="the engine needs LMCache (make install)")
pytest.importorskip("moto.server", reason="the archive needs moto[server] for its loopback S3")
boto3 = pytest.importorskip("boto3")
httpx = pytest.importorskip("httpx")

from moto.server import ThreadedMotoServer  # noqa: E402

from simkv.core.schema import read_requests  # noqa: E402
from simkv.traces.schema import read_trace  # noqa: E402

SCENARIO = ROOT / "scenarios" / "engine-tiny.yaml"
TRACE = ROOT / "traces" / "engine-tiny.parquet"
BUCKET, PREFIX = "simkv-e2e", "flow"
#: The replay's speed and the engine's clock scale: the trace's 2.4 h in about 30 s, so the
#: archive's TTLs and passes run on the trace's time scale.
SPEED = 300
TIERS = ("gpu", "cpu", "disk", "archive")


@pytest.fixture(scope="module")
def env():
    """moto's S3 server on 127.0.0.1 with the bucket created, and the environment every
    command of the flow runs with (test credentials, the worktree on the path)."""
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in creds.items():
            mp.setenv(k, v)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
        yield {"s3": url, "env": {**os.environ, **creds, "PYTHONHASHSEED": "0"}}
        server.stop()


def cli(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SIMKV, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env["env"])
    assert proc.returncode == 0, f"simkv {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


class Engine:
    """``simkv engine serve`` in a subprocess; ``url`` once it prints that it serves."""

    def __init__(self, env: dict, scenario: Path, disk: Path, *options: str) -> None:
        cmd = [*SIMKV, "engine", "serve", str(scenario), "--port", "0", "--disk-path", str(disk), *options]
        # stderr (LMCache's and the server's logs) goes to a file: a pipe nobody reads would fill
        # and block the server
        self.log = disk.with_suffix(".log")
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=env["env"])
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        if "serving at http" not in line:
            self.proc.kill()
            pytest.fail(f"simkv engine serve did not start: {line}{self.tail()}")
        self.url = line.rsplit(" ", 1)[-1].strip()

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> int:
        """SIGTERM, then the engine drains: its archive worker finishes the pass in flight and
        runs a last one (on the loaded CI machine, a backlog of S3 PUTs can take a minute)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(240)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def test_sweep_to_fidelity_report(env, tmp_path) -> None:
    """What holds today, request by request, between the simulator and the engine:

    - every request of the trace is compared and none failed;
    - GPU-tier hits: both sides admit every full chunk of a prompt to the GPU's LRU in prompt
      order, wherever it came from, and the replay keeps the trace's order (one request in
      flight), so the GPU tier holds the same chunks on both sides before every request. A
      request's GPU hits are the GPU-held chunks of the prefix its walk covers; the walk's length
      (the total hits) can differ where the lower tiers differ, since the engine's archive passes
      and LMCache's asynchronous disk writes follow the wall clock. So wherever the totals agree
      the GPU hits agree, and where they differ the GPU hits differ the same way or not at all.
      Identity in every tier waits for the engine to run on the trace's clock."""
    t0 = time.monotonic()
    d = tmp_path
    # 1. sweep: the winner of a small TTL grid.
    cli(env, "sweep", str(SCENARIO), "-o", str(d / "sweep"), "--grid", "ttl.params.base_ttl=300,1800",
        "--objective", "token_hit_rate", "--workers", "1")
    winner = d / "sweep" / "winner.yaml"
    cells = pd.read_parquet(d / "sweep" / "sweep.parquet")
    best = cells.loc[cells["token_hit_rate"].idxmax()]
    won = yaml.safe_load(winner.read_text())
    assert won["ttl"]["params"]["base_ttl"] == best["ttl.params.base_ttl"]
    assert won["block_size"] == 16 and won["tiers"]["archive"]["enabled"]

    # 2. calibrate an engine serving the winner without its archive (calibrating beside the
    # archive worker is not reliable yet; the profile's archive entries stay the analytic default).
    profile = d / "profile.yaml"
    engine = Engine(env, winner, d / "disk-cal", "--set", "tiers.archive.enabled=false",
                    "--set", "ttl.heuristic=none", "--set", "ttl.params={}")
    try:
        # a small grid (the quick one's prefill grid, two chunk counts, one timed run): the
        # flow, not the profile's precision, is under test
        args = ("calibrate", "--engine", engine.url, "-o", str(profile), "--chunks", "1,4", "--repeats", "1",
                "--warmup", "0")
        proc = subprocess.run([*SIMKV, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=env["env"])
        assert proc.returncode == 0, f"simkv {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    finally:
        assert engine.stop() == 0, engine.tail()
    prof = yaml.safe_load(profile.read_text())
    assert prof["kind"] == "table" and prof["block_size"] == 16
    assert set(TIERS) <= set(prof["load"]), prof["load"]

    # 3. a fresh engine serving the winner, its archive in the loopback bucket, its clock at
    # the replay's speed; 4. replay the trace through it.
    prof_set = f"hardware.profile={profile}"
    engine = Engine(env, winner, d / "disk", "--archive", f"s3://{BUCKET}/{PREFIX}",
                    "--archive-endpoint", env["s3"], "--clock-scale", str(SPEED))
    try:
        cli(env, "replay", str(winner), "--set", prof_set, "--engine", engine.url, "-o", str(d / "replay"),
            "--speed", str(SPEED), "--concurrency", "1")
    finally:
        assert engine.stop() == 0, engine.tail()

    # 5. the simulator on the same scenario with the measured profile; 6. validate.
    cli(env, "run", str(winner), "--set", prof_set, "-o", str(d / "sim"))
    cli(env, "validate", str(d / "sim"), str(d / "replay"), "-o", str(d / "fidelity"))
    # 7. the replay's own report.
    rep = cli(env, "report", str(d / "replay"))

    n = len(read_trace(TRACE))
    measured = read_requests(d / "replay" / "requests.parquet")
    assert len(measured) == n and measured["error"].isna().all()
    rj = json.loads((d / "replay" / "replay.json").read_text())
    delta = rj["sessions"][0]["metrics_delta"]
    assert delta["simkv_requests_total"] == n
    assert delta["simkv_archive_uploads_total"] > 0          # the archive worker ran on the bucket

    fid = json.loads((d / "fidelity" / "fidelity.json").read_text())
    assert fid["requests"] == {"compared": n, "failed": 0, "only_sim": 0, "only_measured": 0}
    hr = fid["hit_rate"]
    for fig in (hr["total"], *(hr["by_tier"][t] for t in TIERS)):
        assert 0 <= fig["sim"] <= 1 and 0 <= fig["measured"] <= 1
        assert fig["error"] == pytest.approx(fig["sim"] - fig["measured"])
    assert hr["total"]["measured"] > 0 and hr["by_tier"]["gpu"]["measured"] > 0
    assert {t["name"] for t in fid["targets"]} >= {"ttft_p50", "hits_identical"}
    for name in ("fidelity.md", "ttft_scatter.png", "ttft_error_cdf.png", "tier_hits.png"):
        assert (d / "fidelity" / name).is_file(), name

    sim = read_requests(d / "sim" / "requests.parquet").set_index("request_id")
    meas = measured.set_index("request_id").loc[sim.index]
    d_total = sim["hit_tokens"] - meas["hit_tokens"]
    d_gpu = sim["gpu_hit_tokens"] - meas["gpu_hit_tokens"]
    same_total = d_total == 0
    assert (d_gpu[same_total] == 0).all(), pd.DataFrame({"sim": sim["gpu_hit_tokens"],
                                                         "engine": meas["gpu_hit_tokens"]})[d_gpu != 0]
    assert (d_gpu * d_total >= 0).all()
    assert same_total.sum() == fid["hits"]["total_identical"]

    report = (d / "replay" / "report.md").read_text()
    assert "report.md" in rep.stdout.replace("\n", "") and "| **cost saved** | **$0**" not in report
    print(f"end-to-end flow: {time.monotonic() - t0:.1f} s; "
          f"hits identical in every tier {fid['hits']['identical']}/{n}, same total "
          f"{fid['hits']['total_identical']}/{n}", file=sys.stderr)
