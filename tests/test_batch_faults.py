"""A batch item whose Dask worker is killed mid-task (``SIGKILL``) still completes: Dask runs the
task again on a worker that lives, and the item ends ``done`` with its results."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from somascope import simulate
from somascope.batch import Batch


def _die_once(flag: str) -> int:
    """On a worker: the first call kills its own process (like an OOM kill), later calls return."""
    path = Path(flag)
    if not path.exists():
        path.write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_worker_item_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudpickle

    from somascope.parallel import Engine
    from somascope.pipeline import stages

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    sim = simulate.two_photon(dims=(48, 48), n_frames=300, n_cells=5, seed=4)
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    flag = tmp_path / "flag"
    original = stages.run_summary
    pids: list[int] = []

    def summary_with_a_dying_worker(ctx: Any, folder: Path) -> Any:
        pids.extend(ctx.engine.get().map(_die_once, [str(flag)], progress=False))
        return original(ctx, folder)

    monkeypatch.setattr(stages, "run_summary", summary_with_a_dying_worker)
    batch = Batch.create(tmp_path / "b")
    uuid = batch.add(movie, "cnmf", {"data.neuron_radius": 4.0})
    with Engine("local", n_workers=2) as engine:
        batch.run(engine=engine, progress=False)
    row = batch.item(uuid)
    assert flag.read_text() == "killed once"  # a worker did die
    assert len(pids) == 1  # and the task ran again elsewhere
    assert row["status"] == "done", row["error"]
    assert batch.load(uuid).estimates.K > 0
