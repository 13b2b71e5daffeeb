"""The package stays light to import and its console script is installed."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_is_light() -> None:
    code = (
        "import sys, time, json; t = time.perf_counter(); import somascope; dt = time.perf_counter() - t; "
        "heavy = [m for m in ('dask', 'distributed', 'numba', 'matplotlib', 'h5py', 'zarr', 'scipy') if m in sys.modules]; "
        "print(json.dumps({'seconds': dt, 'heavy': heavy, 'version': somascope.__version__}))"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["heavy"] == []
    assert out["seconds"] < 0.5
    assert out["version"]


def test_submodules_load_on_demand() -> None:
    import somascope

    assert somascope.store.Store.__name__ == "Store"
    assert "parallel" in dir(somascope)
    try:
        somascope.no_such_module  # noqa: B018
    except AttributeError as exc:
        assert "no_such_module" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("unknown attribute did not raise")
