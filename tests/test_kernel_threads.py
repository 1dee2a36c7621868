"""numba's OpenMP workers sleep between cimc's table-read kernels (cimc.backends._lut_kernel sets
OMP_WAIT_POLICY=PASSIVE before numba starts its threads), unless the user chose a policy: spinning workers took the
cores from onnxruntime's digital segments between kernels. Checked in fresh interpreters, since the variable is
read once, when the OpenMP runtime starts."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cimc.backends import lut_reads

needs_numba = pytest.mark.skipif(lut_reads.import_error() is not None, reason="numba cannot be imported here")

PROBE = ("import os, numpy as np\n"
         "from cimc.backends import lut_reads\n"
         "lut_reads.scaled(np.arange(4), 0.5, np.empty(4))\n"          # runs a parallel kernel: threads started
         "import numba\n"
         "print(os.environ.get('OMP_WAIT_POLICY'), numba.threading_layer())\n")


def _policy(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return done.stdout.split()


@needs_numba
def test_kernel_workers_sleep_between_kernels_by_default():
    policy, layer = _policy(None)
    assert policy == "PASSIVE" and layer in ("omp", "tbb", "workqueue")


@needs_numba
def test_a_users_wait_policy_is_kept():
    assert _policy("ACTIVE")[0] == "ACTIVE"
