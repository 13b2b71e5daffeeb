"""The Dask engine: same results serial and parallel, errors surface, BLAS threads set."""

from __future__ import annotations

import os

import pytest

from somascope.parallel import THREAD_ENV_VARS, Engine, as_engine


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise RuntimeError("task three failed")
    return x


def _blas_env(_: int) -> dict[str, str | None]:
    return {var: os.environ.get(var) for var in THREAD_ENV_VARS}


def test_serial_map_keeps_order_and_raises_real_errors() -> None:
    engine = as_engine(None)
    assert engine.kind == "serial"
    assert engine.map(_square, range(6), progress=False) == [0, 1, 4, 9, 16, 25]
    with pytest.raises(RuntimeError, match="task three"):
        engine.map(_fail_on_three, range(5), progress=False)


def test_local_cluster_same_results_and_single_threaded_blas() -> None:
    with Engine("local", n_workers=2, blas_threads=1) as engine:
        assert engine.n_workers == 2
        assert engine.map(_square, range(20), progress=False) == [x * x for x in range(20)]
        envs = engine.map(_blas_env, range(4), progress=False)
        assert all(env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1" for env in envs)
        with pytest.raises(RuntimeError, match="task three"):
            engine.map(_fail_on_three, range(5), progress=False)
        # an engine wrapping an existing client (how a cluster-started Client is passed in)
        shared = Engine(engine.client)
        assert shared.kind == "client" and shared.map(_square, [7], progress=False) == [49]
        # imap pulls its items lazily, a few in flight: what a pass over many blocks relies on
        pulled = []

        def items():
            for x in range(30):
                pulled.append(x)
                yield x

        seen = {}
        for i, result in engine.imap(_square, items(), progress=False, in_flight=4):
            assert len(pulled) <= len(seen) + 4 + 1  # never more than in_flight ahead of the results
            seen[i] = result
        assert seen == {x: x * x for x in range(30)}
        with pytest.raises(RuntimeError, match="task three"):
            list(engine.imap(_fail_on_three, iter(range(8)), progress=False, in_flight=2))


def test_bad_scheduler_specs() -> None:
    with pytest.raises(ValueError, match="not understood"):
        Engine(42)
    with pytest.raises(ConnectionError, match="dask scheduler"):
        Engine("tcp://127.0.0.1:9", connect_timeout=2)
