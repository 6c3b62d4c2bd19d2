"""Two processes x 2 CPU devices (gloo collectives), experts split across processes: the same losses as one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from multihost_worker import batches, train_losses
from parallel_helpers import random_model, tiny_config

from qwen35_jax.parallel import multihost

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_device(tmp_path):
    port, out = _free_port(), tmp_path / "losses.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("XLA_FLAGS", None)
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n\n".join(logs)[-6000:]
    result = json.loads(out.read_text())
    assert result["rows"] == [0, 4]  # process 0 fed the first half of every global batch

    config = tiny_config()
    expected = train_losses(random_model(config), batches(config.vocab_size), config.router_aux_loss_coef)
    np.testing.assert_allclose(result["losses"], expected, rtol=1e-5)
    assert expected[-1] < expected[0]


def test_multihost_config_is_validated_and_single_process_is_a_no_op():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['port'\]"):
        multihost.initialize({"port": 1234})
    with pytest.raises(ValueError, match=r"process_id=2 is invalid"):
        multihost.initialize(dict(enabled=True, num_processes=2, process_id=2))
    multihost.initialize(None)  # disabled: nothing happens
    multihost.initialize(dict(enabled=False, coordinator_address="127.0.0.1:1"))
