"""BLAS thread limits through threadpoolctl: applied where charlm asks for one
thread (a limited block, sampling, a worker process) and lifted afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_info

from charlm import blas
from charlm.config import SampleConfig
from charlm.model import CharModel, ModelConfig
from charlm.sample import Sampler
from charlm.vocab import Vocab


def numpy_blas_threads() -> list[int]:
    """Every loaded BLAS library's thread count, as threadpoolctl reports it (not through charlm.blas)."""
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def several_threads():
    """The BLAS may use more than one thread here, so a limit to one can be seen."""
    if not blas.controllable():
        pytest.skip("no controllable BLAS loaded")
    if blas.threads() < 2:
        pytest.skip("the BLAS already uses a single thread (one core, or a *_NUM_THREADS=1 variable)")
    return numpy_blas_threads()


def test_info_describes_numpys_blas():
    libs = blas.info()
    assert libs, "NumPy links a BLAS that threadpoolctl knows"
    assert all({"internal_api", "num_threads", "version"} <= lib.keys() for lib in libs)
    assert blas.threads() == max(lib["num_threads"] for lib in libs)


def test_limit_holds_inside_the_block_and_is_lifted_after(several_threads):
    with blas.limit(1):
        assert numpy_blas_threads() == [1] * len(several_threads)
        assert blas.threads() == 1
    assert numpy_blas_threads() == several_threads


def test_limit_is_lifted_when_the_block_raises(several_threads):
    with pytest.raises(KeyError), blas.limit(1):
        raise KeyError("x")
    assert numpy_blas_threads() == several_threads


def test_sampling_uses_one_thread_and_gives_the_rest_back(several_threads):
    vocab = Vocab.from_text("abc de\nfg")
    sampler = Sampler(
        CharModel(ModelConfig(len(vocab), embed=3, hidden=5, layers=1), seed=1), vocab, SampleConfig(seed=0)
    )
    seen = []
    for _ in sampler.generate(5):  # the warm-up runs first, limited as well
        seen.append(numpy_blas_threads())
    assert seen == [[1] * len(several_threads)] * 5
    assert numpy_blas_threads() == several_threads
    chars = sampler.generate(5)
    next(chars)
    chars.close()  # a sample abandoned part-way gives the threads back too
    assert numpy_blas_threads() == several_threads


def test_limit_process_lasts_for_the_rest_of_the_process(several_threads):
    code = (
        "from charlm import blas; from threadpoolctl import threadpool_info; blas.limit_process(1); "
        "import numpy as np; np.ones((64, 64)) @ np.ones((64, 64)); "
        "print(max(lib['num_threads'] for lib in threadpool_info() if lib['user_api'] == 'blas'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"
