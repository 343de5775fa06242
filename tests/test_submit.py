"""`posepipe submit` against a real two-node Ray cluster on 127.0.0.1, archive and outputs on S3 (moto).

The cluster is started with `ray start` in a dedicated temp dir and on ports picked here, and stopped by signalling
only its own processes (their command lines name that temp dir or its GCS port): `ray stop` would stop every Ray on
the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import boto3
import pandas as pd
import pytest

from jobs.submit import build_entrypoint, config_arguments, main, parse_args, shown
from pipeline.models.bottomup import ModelConfig, PoseNet
from pipeline.models.checkpoint import checkpoint_metadata, save_checkpoint

from conftest import encode_video, s3_server

BUCKET = "nightly"
RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cluster_processes(temp_dir: str, gcs_port: int) -> list[int]:
    """Pids of this cluster's processes: those whose command lines name its temp dir or GCS port, and all their
    descendants (the dashboard and runtime-env agents rewrite their command lines to `ray::DashboardAgent`...)."""
    named, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(temp_dir in a or a.endswith(f":{gcs_port}") for a in args):
            named.add(int(entry.name))

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid in named:
                return True
            pid = parents.get(pid, 0)
        return False

    return [pid for pid in parents if ours(pid)]


def stop_cluster(temp_dir: str, gcs_port: int, grace_s: float = 15.0) -> list[int]:
    """SIGTERM this cluster's processes, SIGKILL what is left after `grace_s`; returns any still running. The
    process list is taken before the first signal: once a raylet is gone its agents belong to init and no longer
    look like the cluster's."""
    pids = set(cluster_processes(temp_dir, gcs_port))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids | set(cluster_processes(temp_dir, gcs_port)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.5)
    return alive(pids) + cluster_processes(temp_dir, gcs_port)


def alive(pids: set[int]) -> list[int]:
    """Those of `pids` still running (zombies, already dead, do not count)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            running.append(pid)
    return running


def node_ports(ports: list[int]) -> list[str]:
    names = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "node-manager-port", "object-manager-port"]
    return [f"--{name}={port}" for name, port in zip(names, ports)] + [
        "--worker-port-list=" + ",".join(map(str, ports[len(names):]))]


@pytest.fixture(scope="module")
def s3():
    with s3_server("AKIASUBMITTEST000001", "submit-secret-Lr8Qw2") as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield SimpleNamespace(endpoint=endpoint, client=client)


@pytest.fixture(scope="module")
def cluster(s3):
    """Head (1 CPU) + worker (1 CPU) with Ray's token authentication on, as on a production cluster. The nodes hold
    the AWS credentials, as instance roles would; the job is told only the endpoint (`--env`)."""
    temp_dir = tempfile.mkdtemp(prefix="ppray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    token_path = Path(temp_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    gcs, dashboard, client_port, *ports = free_ports(3 + 2 * 30)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "RAY_AUTH_TOKEN")}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard}", f"--ray-client-server-port={client_port}", *common,
                        *node_ports(ports[:30])], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", *common, *node_ports(ports[30:])],
                       env=env, check=True, capture_output=True, timeout=180)
        address = f"http://127.0.0.1:{dashboard}"
        wait_for_nodes(address, 2, token_path.read_text())
        spare = free_ports(30)

        def add_node() -> None:
            """A third node (1 CPU) joins, as an autoscaler would add one."""
            subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", *common, *node_ports(spare)],
                           env=env, check=True, capture_output=True, timeout=180)

        yield SimpleNamespace(address=address, token_path=token_path, add_node=add_node)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"ray start failed: {exc.stderr.decode()[-2000:]}")
    finally:
        left = stop_cluster(temp_dir, gcs)
        assert not left, f"the test cluster's processes {left} outlived stop_cluster"
        shutil.rmtree(temp_dir, ignore_errors=True)


def state(address: str, kind: str, token: str) -> list[dict]:
    """Rows of Ray's state API (`/api/v0/nodes`, `/api/v0/actors`) over HTTP with the cluster's token: the in-process
    `ray.util.state` client follows this process's RAY_AUTH_MODE (disabled for the suite's local clusters)."""
    request = urllib.request.Request(f"{address}/api/v0/{kind}?limit=1000&detail=1",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]["result"]["result"]


def wait_for_nodes(address: str, n: int, token: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if sum(node["state"] == "ALIVE" for node in state(address, "nodes", token)) >= n:
                return
        except Exception:  # the dashboard answers only once it is up
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{n} Ray nodes did not come up at {address} within {timeout_s} s")


def test_entrypoint_carries_the_same_config_and_hides_secrets(tmp_path):
    outside = tmp_path / "nightly.yaml"
    outside.write_text("decode:\n  fps: 2\nstorage_options:\n  secret: abc\n")
    args = parse_args(["--input", "s3://b/v", "--output", "s3://b/o", "--config", str(outside),
                       "--set", "model.batch_size=4", "--set", "storage_options.token=xyz"])
    command = build_entrypoint(args)
    assert command[:7] == ["python", "-m", "jobs.run", "--input", "s3://b/v", "--output", "s3://b/o"]
    assert command[7:] == ["--set", 'decode={"fps": 2}', "--set", 'storage_options={"secret": "abc"}',
                           "--set", "model.batch_size=4", "--set", "storage_options.token=xyz",
                           "--set", "ray.address=auto"]
    assert "abc" not in shown(command) and "xyz" not in shown(command)
    repo = Path(__file__).resolve().parent.parent
    assert config_arguments(str(repo / "configs" / "cluster.yaml"), repo) == ["--config", "configs/cluster.yaml"]


def test_bad_config_fails_before_contacting_the_cluster(capsys):
    code = main(["--address", "http://127.0.0.1:9", "--input", "s3://b/v", "--output", "s3://b/o",
                 "--set", "decode.fsp=3"])
    assert code == 2 and "decode.fsp: unknown key" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_submit_without_the_clusters_token_fails_in_one_line(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                                  # no ~/.ray/auth_token either
    args = ["--address", cluster.address, "--input", "s3://b/v", "--output", "s3://b/o"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posepipe: error: the Ray cluster at") and "\n" not in err
    assert "requires a token" in err and "RAY_AUTH_TOKEN" in err and "Traceback" not in err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(args) == 2 and "refused the token given" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert main(args) == 2 and "RAY_AUTH_TOKEN_PATH=" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_submit_runs_the_job_on_a_two_node_cluster(s3, cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_path))      # as `ray get-auth-token` would give it
    for key in ("videos/cam0/a.mp4", "videos/cam1/b.mp4"):
        path = encode_video(tmp_path / key, num_frames=4, width=64, height=48)
        s3.client.upload_file(str(path), BUCKET, key)
    config = ModelConfig(input_size=64, width=8, feature_channels=16, head_channels=8)
    save_checkpoint(PoseNet(config), str(tmp_path / "random.pt"), checkpoint_metadata(config))
    s3.client.upload_file(str(tmp_path / "random.pt"), BUCKET, "models/random.pt")

    code = main(["--address", cluster.address, "--input", f"s3://{BUCKET}/videos", "--output", f"s3://{BUCKET}/out",
                 "--set", f"model.checkpoint=s3://{BUCKET}/models/random.pt", "--set", "decode.workers=1",
                 "--set", "model.workers=1", "--env", f"AWS_ENDPOINT_URL={s3.endpoint}"])
    logs = capsys.readouterr().out
    assert code == 0, logs[-3000:]
    assert "videos   2 ok / 0 failed" in logs                                 # the job's summary, streamed back
    runs = pd.read_parquet(f"s3://{BUCKET}/out/runs", storage_options={"endpoint_url": s3.endpoint})
    assert runs.loc[0, "videos_ok"] == 2 and runs.loc[0, "frames"] == 8
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix="out/videos/")["Contents"]]
    assert sum(k.endswith(".parquet") for k in keys) == 2 and f"out/videos/_delta_log/{0:020d}.json" in keys
    actors = state(cluster.address, "actors", cluster.token_path.read_text())
    stages = {a["class_name"]: a["node_id"] for a in actors if "MapBatches" in a["class_name"]}
    assert len(stages) == 2 and len(set(stages.values())) == 2               # decode and inference on two nodes


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_a_node_that_joins_mid_run_gets_actors(s3, cluster, tmp_path, monkeypatch, capsys):
    """The pools autoscale: a node added while the job runs gets a decode or inference actor. The job has far more
    work than the test waits for, on any CPU, and is stopped once the new node has an actor (runs last: the cluster
    keeps the third node)."""
    import threading

    from ray.job_submission import JobSubmissionClient

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_path))
    token = cluster.token_path.read_text()
    for i in range(20):
        path = encode_video(tmp_path / f"long/cam0/v{i}.mp4", num_frames=300, width=64, height=48)
        s3.client.upload_file(str(path), BUCKET, f"long/cam0/v{i}.mp4")
    config = ModelConfig(input_size=64, width=8, feature_channels=16, head_channels=8)
    save_checkpoint(PoseNet(config), str(tmp_path / "random.pt"), checkpoint_metadata(config))
    s3.client.upload_file(str(tmp_path / "random.pt"), BUCKET, "models/random.pt")
    nodes_before = {n["node_id"] for n in state(cluster.address, "nodes", token)}

    def actors(node_id: str | None = None) -> list[dict]:
        return [a for a in state(cluster.address, "actors", token) if "MapBatches" in a["class_name"]
                and a["state"] == "ALIVE" and (node_id is None or a["node_id"] == node_id)]

    job = threading.Thread(target=main, args=([
        "--address", cluster.address, "--input", f"s3://{BUCKET}/long", "--output", f"s3://{BUCKET}/long-out",
        "--set", f"model.checkpoint=s3://{BUCKET}/models/random.pt", "--set", "model.frame_size=512",
        "--submission-id", "posepipe-joins", "--env", f"AWS_ENDPOINT_URL={s3.endpoint}"],), daemon=True)
    job.start()
    placed = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len({a["class_name"] for a in actors()}) < 2:
            time.sleep(0.5)                                  # both pools up: the job is processing
        assert job.is_alive(), capsys.readouterr().out[-3000:]
        cluster.add_node()
        [new_node] = {n["node_id"] for n in state(cluster.address, "nodes", token)} - nodes_before
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not placed and job.is_alive():
            placed = [a["class_name"] for a in actors(new_node)]
            time.sleep(0.5)
    finally:
        JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {token}"}).stop_job("posepipe-joins")
        job.join(60)
    assert placed, "no decode or inference actor was started on the node that joined"
