"""infra/cpu/as-avx2: an AVX-512 machine seen as AVX2-only by every runtime, and crashes still crash."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

AS_AVX2 = Path(__file__).resolve().parents[1] / "infra" / "cpu" / "as-avx2"


def cpuid_faulting() -> bool:
    try:
        return "cpuid_fault" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


needs_faulting = pytest.mark.skipif(
    platform.machine() != "x86_64" or not shutil.which("gcc") or not cpuid_faulting(),
    reason="needs Linux CPUID faulting (cpuid_fault in /proc/cpuinfo) and gcc")


def as_avx2(code: str, *python_args: str, env: dict[str, str] | None = None,
            argv: list[str] = ()) -> subprocess.CompletedProcess:
    """`python -c code argv...` under infra/cpu/as-avx2."""
    return subprocess.run([str(AS_AVX2), sys.executable, *python_args, "-c", code, *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=AS_AVX2.parents[2])


def answered(stderr: str) -> int:
    """cpuid calls the handler answered, from its report at exit (POSEPIPE_AVX2_CPUID_LOG=1)."""
    lines = [line for line in stderr.splitlines() if line.startswith("avx2_cpuid:")]
    assert len(lines) == 1, stderr
    return int(lines[0].split("answered ")[1].split()[0])


SEEN = """
import torch
from jobs.benchmark.report import cpu_features, vector_isa
f = cpu_features()
print(f["AVX2"], f["AVX512F"], f.get("AVX512BF16"), torch.backends.cpu.get_cpu_capability(), vector_isa())
"""


@needs_faulting
def test_cpuid_reads_avx2_only_and_every_answer_is_counted():
    done = as_avx2(SEEN, env={"POSEPIPE_AVX2_CPUID_LOG": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "False", "AVX2", "AVX2"]
    assert answered(done.stderr) > 0


@needs_faulting
def test_onnxruntime_picks_its_kernels_from_the_answers_and_computes_the_same(tmp_path):
    """A conv graph under ONNX Runtime, native and held to AVX2: outputs agree to float rounding; and loading ONNX
    Runtime asks cpuid (through the handler) beyond what numpy, which it imports, asks."""
    code = """
import io, sys, numpy as np, torch, onnxruntime
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 16, 3))
torch.manual_seed(0)
for p in net.parameters():
    torch.nn.init.normal_(p, std=0.2)
buffer = io.BytesIO()
torch.onnx.export(net, torch.zeros(2, 3, 32, 32), buffer, dynamo=False)
session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
np.save(sys.argv[1], session.run(None, {session.get_inputs()[0].name: x})[0])
"""
    native, held = tmp_path / "native.npy", tmp_path / "avx2.npy"
    plain = subprocess.run([sys.executable, "-c", code, str(native)], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    done = as_avx2(code, argv=[str(held)])
    assert done.returncode == 0, done.stderr
    a, b = np.load(native), np.load(held)
    assert a.shape == b.shape == (2, 16, 30, 30)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
    log = {"POSEPIPE_AVX2_CPUID_LOG": "1"}
    assert answered(as_avx2("import onnxruntime", env=log).stderr) > answered(as_avx2("import numpy", env=log).stderr)


@needs_faulting
def test_ray_workers_started_under_it_see_avx2_only():
    done = as_avx2("""
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
def seen():
    from jobs.benchmark.report import cpu_features
    f = cpu_features()
    return f["AVX2"], f["AVX512F"]

print(*ray.get(seen.remote()))
ray.shutdown()
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["True", "False"]


@needs_faulting
@pytest.mark.parametrize("crash", ["import ctypes; ctypes.string_at(0)",
                                   "import os, signal; os.kill(os.getpid(), signal.SIGSEGV); print('survived')"])
def test_real_segfaults_still_reach_the_programs_handler_and_kill(crash):
    done = as_avx2(crash, "-X", "faulthandler")
    assert done.returncode == -11, (done.returncode, done.stdout, done.stderr)
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "survived" not in done.stdout


def test_usage_error_exits_2_with_one_line():
    done = subprocess.run([str(AS_AVX2)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "usage" in done.stderr
