"""Reading mesmerize-core batches (pandas DataFrame pickles) into somascope item specs."""

from __future__ import annotations

import base64
import os
import pickle
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest

from somascope.batch.mesmerize import ItemSpec, MesmerizeBatchError, read_mesmerize_batch
from somascope.params import Params

COLUMNS = ["algo", "item_name", "input_movie_path", "params", "outputs", "added_time", "ran_time",
           "algo_duration", "comments", "uuid"]
MCORR = "0b3c1f2e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"
CNMF_A = "1c4d2e3f-5e6b-4c7d-9e8f-0a1b2c3d4e5f"
CNMF_B = "2d5e3f40-6f7c-4d8e-af90-1b2c3d4e5f60"
CNMFE = "3e6f4051-708d-4e9f-b0a1-2c3d4e5f6071"
MMAP = f"{MCORR}/{MCORR}-session1_els__d1_512_d2_512_d3_1_order_F_frames_1000.mmap"

MCORR_PARAMS = {"main": {"max_shifts": [24, 24], "strides": [48, 48], "overlaps": [24, 24],
                         "max_deviation_rigid": 3, "border_nan": "copy", "pw_rigid": True,
                         "gSig_filt": None}}
CNMF_PARAMS = {"main": {"fr": 30, "p": 1, "nb": 2, "merge_thr": 0.85, "rf": 15, "stride": 6, "K": 4,
                        "gSig": [4, 4], "ssub": 1, "tsub": 1, "method_init": "greedy_roi",
                        "min_SNR": 2.0, "rval_thr": 0.7, "use_cnn": True, "min_cnn_thr": 0.8,
                        "cnn_lowest": 0.1, "decay_time": 0.4}, "refit": True}
CNMFE_PARAMS = {"main": {"method_init": "corr_pnr", "K": None, "gSig": (3, 3), "gSiz": (13, 13),
                         "merge_thr": 0.7, "p": 1, "tsub": 2, "ssub": 1, "rf": 40, "stride": 20,
                         "only_init": True, "nb": 0, "nb_patch": 0, "method_deconvolution": "oasis",
                         "low_rank_background": None, "update_background_components": True,
                         "min_corr": 0.8, "min_pnr": 10, "normalize_init": False,
                         "center_psf": True, "ssub_B": 2, "ring_size_factor": 1.4,
                         "del_duplicates": True}}


def _row(algo: str, name: str, movie: str, params: dict, uuid: str, *, outputs: dict | None = None,
         comments: str | None = None) -> dict:
    ran = outputs is not None
    return {"algo": algo, "item_name": name, "input_movie_path": movie, "params": params,
            "outputs": outputs, "added_time": "2024-03-01T10:00:00",
            "ran_time": "2024-03-01T10:05:00" if ran else None,
            "algo_duration": "42.0 sec" if ran else None, "comments": comments, "uuid": uuid}


def _batch(rows: list[dict]) -> pd.DataFrame:
    """A DataFrame built the way mesmerize-core's add_item builds it (one Series per row)."""
    df = pd.DataFrame(columns=COLUMNS)
    for row in rows:
        df.loc[df.index.size] = pd.Series(row)
    return df


def _mesmerize_rows() -> list[dict]:
    mcorr_out = {"mcorr-output-path": MMAP, "corr-img-path": f"{MCORR}/{MCORR}_cn.npy",
                 "shifts": f"{MCORR}/{MCORR}_shifts.npy", "success": True, "traceback": None,
                 "runtime": np.float64(41.7)}
    cnmfe_out = {"cnmf-hdf5-path": PurePosixPath(f"{CNMFE}/{CNMFE}.hdf5"),  # cnmfe stores Path objects
                 "cnmf-memmap-path": f"{CNMFE}/{CNMFE}_cnmf-memmap_d1_60_d2_80_d3_1_order_C_frames_500.mmap",
                 "success": True, "traceback": None}
    return [
        _row("mcorr", "session1", "mouse1/session1.tif", MCORR_PARAMS, MCORR, outputs=mcorr_out),
        _row("cnmf", "session1", MMAP, CNMF_PARAMS, CNMF_A, comments="K=4, looks good"),
        _row("cnmf", "session1", MMAP, {**CNMF_PARAMS, "main": {**CNMF_PARAMS["main"], "K": 8}},
             CNMF_B, outputs={"success": False, "traceback": "Traceback ...\nMemoryError"}),
        _row("cnmfe", "endoscope", "mouse2/1p.tif", CNMFE_PARAMS, CNMFE, outputs=cnmfe_out),
    ]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(raw-data root with the two movies, batch folder with the mcorr output)."""
    raw, batch = tmp_path / "raw", tmp_path / "batch"
    for movie in (raw / "mouse1" / "session1.tif", raw / "mouse2" / "1p.tif", batch / MMAP):
        movie.parent.mkdir(parents=True, exist_ok=True)
        movie.write_bytes(b"")
    return raw, batch


@pytest.fixture
def batch_file(folders: tuple[Path, Path]) -> Path:
    path = folders[1] / "batch.pickle"
    _batch(_mesmerize_rows()).to_pickle(path)
    return path


def _by_uuid(specs: list[ItemSpec]) -> dict[str, ItemSpec]:
    return {s.uuid: s for s in specs}


# ----------------------------------------------------------------------------- conversion


def test_reads_items_links_and_comments(batch_file: Path, folders: tuple[Path, Path]) -> None:
    specs = read_mesmerize_batch(batch_file, raw_data_root=folders[0])
    assert [s.uuid for s in specs] == [MCORR, CNMF_A, CNMF_B, CNMFE]
    assert [s.algorithm for s in specs] == ["mcorr", "cnmf", "cnmf", "cnmfe"]
    assert [s.name for s in specs] == ["session1", "session1", "session1", "endoscope"]
    got = _by_uuid(specs)
    assert got[MCORR].input == {"movie": "mouse1/session1.tif"}
    assert got[CNMF_A].input == {"item": MCORR} and got[CNMF_B].input == {"item": MCORR}
    assert got[CNMFE].input == {"movie": "mouse2/1p.tif"}
    assert got[CNMF_A].comments == "K=4, looks good" and got[MCORR].comments is None
    assert got[CNMF_B].params["main"]["K"] == 8 and got[CNMF_B].params["refit"] is True
    assert got[MCORR].params == MCORR_PARAMS
    assert got[CNMF_A].notes == []  # nothing dropped or guessed


def test_realistic_params_are_understood_by_somascope(batch_file: Path) -> None:
    specs = read_mesmerize_batch(batch_file)
    for spec in specs:
        Params.from_dict(spec.params)  # raises on a rejected key
        assert not any("does not accept" in n for n in spec.notes), spec.notes
    cnmfe = _by_uuid(specs)[CNMFE]
    assert Params.from_dict(cnmfe.params).data.is_1p
    assert cnmfe.params == CNMFE_PARAMS  # all implicit CNMF-E settings were given: nothing added


def test_run_results_are_noted_not_imported(batch_file: Path) -> None:
    got = _by_uuid(read_mesmerize_batch(batch_file))
    assert any("succeeded" in n and "2024-03-01T10:05:00" in n for n in got[MCORR].notes)
    assert any("failed" in n for n in got[CNMF_B].notes)


def test_items_come_after_the_item_they_read(folders: tuple[Path, Path]) -> None:
    rows = _mesmerize_rows()
    path = folders[1] / "shuffled.pickle"
    _batch([rows[1], rows[3], rows[0], rows[2]]).to_pickle(path)
    specs = read_mesmerize_batch(path)
    assert [s.uuid for s in specs] == [MCORR, CNMF_A, CNMFE, CNMF_B]


def test_mcorr_of_a_motion_corrected_movie_is_chained() -> None:
    second = f"{CNMF_A}/{CNMF_A}-{MCORR}-session1_rig__d1_512_d2_512_d3_1_order_F_frames_1000.mmap"
    rows = [_row("cnmf", "s1", second, CNMF_PARAMS, CNMF_B),
            _row("mcorr", "s1 again", MMAP, MCORR_PARAMS, CNMF_A),
            _row("mcorr", "s1", "mouse1/session1.tif", MCORR_PARAMS, MCORR)]
    specs = read_mesmerize_batch(_batch(rows))
    assert [s.uuid for s in specs] == [MCORR, CNMF_A, CNMF_B]
    assert specs[1].input == {"item": MCORR} and specs[2].input == {"item": CNMF_A}


def test_items_reading_each_other_are_an_error() -> None:
    other = f"{CNMF_A}/{CNMF_A}-x_els__d1_8_d2_8_d3_1_order_F_frames_10.mmap"
    rows = [_row("mcorr", "a", MMAP, MCORR_PARAMS, CNMF_A), _row("mcorr", "b", other, MCORR_PARAMS, MCORR)]
    with pytest.raises(MesmerizeBatchError, match="in a circle"):
        read_mesmerize_batch(_batch(rows))

def test_links_without_recorded_outputs_and_old_layout(folders: tuple[Path, Path]) -> None:
    """A not-yet-run mcorr parent (folder <uuid>/) and old mesmerize-core's <uuid>-prefixed file."""
    old = "mouse1/" + MCORR + "session1_els__d1_512_d2_512_d3_1_order_F_frames_1000.mmap"
    rows = [_row("mcorr", "s1", "mouse1/session1.tif", {"mcorr_kwargs": MCORR_PARAMS["main"]}, MCORR),
            _row("cnmf", "s1", MMAP, CNMF_PARAMS, CNMF_A),
            _row("cnmf", "s1", old, CNMF_PARAMS, CNMF_B),
            _row("cnmf", "s1", f"{MCORR}/{MCORR}_mean_projection.npy", CNMF_PARAMS, CNMFE)]
    got = _by_uuid(read_mesmerize_batch(_batch(rows)))
    assert got[CNMF_A].input == got[CNMF_B].input == {"item": MCORR}
    assert got[CNMFE].input == {"movie": f"{MCORR}/{MCORR}_mean_projection.npy"}  # not a movie of it
    assert any("batch folder" in n for n in got[CNMFE].notes)
    Params.from_dict(got[MCORR].params)  # the old {"mcorr_kwargs": ...} layout is read too


def test_windows_separators_still_link(folders: tuple[Path, Path]) -> None:
    rows = _mesmerize_rows()
    rows[1]["input_movie_path"] = MMAP.replace("/", "\\")
    rows[0]["input_movie_path"] = "mouse1\\session1.tif"
    got = _by_uuid(read_mesmerize_batch(_batch(rows)))
    assert got[CNMF_A].input == {"item": MCORR}
    assert got[MCORR].input == {"movie": "mouse1/session1.tif"}


def test_raw_data_root_makes_absolute_paths_relative(folders: tuple[Path, Path], tmp_path: Path) -> None:
    raw, _ = folders
    rows = _mesmerize_rows()
    rows[0]["input_movie_path"] = str(raw / "mouse1" / "session1.tif")
    rows[3]["input_movie_path"] = str(tmp_path / "elsewhere" / "1p.tif")
    got = _by_uuid(read_mesmerize_batch(_batch(rows), raw_data_root=raw))
    assert got[MCORR].input == {"movie": "mouse1/session1.tif"}
    assert got[CNMFE].input == {"movie": str(tmp_path / "elsewhere" / "1p.tif")}
    got = _by_uuid(read_mesmerize_batch(_batch(rows)))  # no root: kept absolute
    assert got[MCORR].input == {"movie": str(raw / "mouse1" / "session1.tif")}


def test_relative_movie_missing_under_root_is_noted(batch_file: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    got = _by_uuid(read_mesmerize_batch(batch_file, raw_data_root=empty))
    assert got[MCORR].input == {"movie": "mouse1/session1.tif"}
    assert any("not found under the raw-data root" in n for n in got[MCORR].notes)


def test_dataframe_source_uses_batch_path_attr(folders: tuple[Path, Path]) -> None:
    _, batch = folders
    stray = f"{MCORR}/notes.txt"
    (batch / stray).write_text("x")
    rows = _mesmerize_rows()
    rows[3]["input_movie_path"] = stray
    df = _batch(rows)
    df.attrs["batch_path"] = str(batch / "batch.pickle")  # what mesmerize-core's load_batch sets
    got = _by_uuid(read_mesmerize_batch(df))
    assert got[CNMFE].input == {"movie": str(batch / stray)}
    assert got[CNMF_A].input == {"item": MCORR}


def test_cnmfe_implicit_settings_are_added(folders: tuple[Path, Path]) -> None:
    main = {k: v for k, v in CNMFE_PARAMS["main"].items()
            if k not in ("method_init", "only_init", "center_psf", "normalize_init")}
    rows = [_row("cnmfe", "endoscope", "mouse2/1p.tif", {"main": main}, CNMFE)]
    spec = read_mesmerize_batch(_batch(rows))[0]
    assert spec.params["main"]["center_psf"] is True and spec.params["main"]["method_init"] == "corr_pnr"
    assert any("center_psf=True" in n for n in spec.notes)
    p = Params.from_dict(spec.params)
    assert p.data.is_1p and p.init.method == "greedy_corr"


def test_unusual_params_are_kept_and_noted() -> None:
    params = {"main": {"fr": np.float64(20.0), "gSig": np.array([5, 5]), "n_processes": 8,
                       "not_a_param": 1}, "extra": {"x": 1}}
    df = _batch([_row("cnmf", None, "a/movie.tif", params, CNMF_A)])
    df["my_tag"] = ["keep me"]
    spec = read_mesmerize_batch(df)[0]
    assert spec.params["main"]["fr"] == 20.0 and type(spec.params["main"]["fr"]) is float
    assert spec.params["main"]["gSig"] == [5, 5] and spec.params["main"]["not_a_param"] == 1
    assert spec.name == "movie"
    text = " | ".join(spec.notes)
    for expected in ("item_name", "extra", "main.n_processes", "does not accept", "not_a_param",
                     "'my_tag'"):
        assert expected in text, (expected, text)


def test_missing_uuid_gets_a_new_one() -> None:
    spec = read_mesmerize_batch(_batch([_row("mcorr", "a", "a.tif", MCORR_PARAMS, None)]))[0]
    assert len(spec.uuid) == 36 and any("no uuid" in n for n in spec.notes)


def test_old_pickle_protocol(folders: tuple[Path, Path]) -> None:
    path = folders[1] / "p2.pickle"
    _batch(_mesmerize_rows()).to_pickle(path, protocol=2)
    assert len(read_mesmerize_batch(path)) == 4


def test_empty_batch(tmp_path: Path) -> None:
    path = tmp_path / "empty.pickle"
    pd.DataFrame(columns=COLUMNS).to_pickle(path)
    assert read_mesmerize_batch(path) == []


# A two-item batch written by pandas 1.5.3 / numpy 1.26 (mcorr + cnmf reading its output; a
# pathlib.Path and a pandas.Timestamp in it), as mesmerize-core users have them on disk:
# zlib-compressed, base64-encoded DataFrame.to_pickle output.
_PANDAS_1_5_BATCH = (
    "eNqNVe1v3DQYv7vdS3cbW0sFq5g0gQDRfUjuci9dNyGBKJo0oh3T4ANfJstJnLPVOIlim7YIBAi1a5G/zfC/8D/A3wSP"
    "nbv1uk2iVmQ7zs/P6+958kvnj7+6DTf0RonzBAs/LiripxXmxOirX2KJH7r9C3P3V/OT2dZtxOeV0XdW4SyXpMpxJnyO"
    "czwnlTD6+hdZEe8/rt/hun53cQNlLBLnV4y+iVResng/Iyiydyz4nVzx8qiWzlUmGa4qfARSUUXiIheyUrG0wI4DGt0D"
    "2Q7ywoSNY7PXjMxz89Rsh82wG7ZODL2pO4k8Kq0nuvX1rjk7rb9f0c0fzWw2++pfGG4KP5MmOnsGvnY4GADOtuOcp0av"
    "CSIEK/LA0A/0Ji+UIMFgeeZLBpDfhtE4DtIR8SbJFHuTaCf2dpN7xLufDnEQjeJxMiGDy4C8pWBEMoFQEqBpMELJqF7G"
    "KEBFlZAKPUQuWQIFw+HQ5xyXkCbd5pjlLl99jg+RoCyVwoRb4dYJ+FEeoIrNWWJOlQAM/dgCm6EJ27o9/4bNYRO2T4zS"
    "nYqkTALMAjZcNLxCyVJJr8SSGvqh7gkVx2CqOdVXZYVjEmFI4Uz3KpVLBsyh13VXxDjDlgV0S7fSC8H/9JXgNyD4e2v/"
    "/G3H+ufmBHBO+w2bA48m6bRWrXt2AS4BTZ8Ugh0+saeQ3I+CeJKMyDj1pmQn8ibxvcS7T3ZT7zy2U8jU3cvAfKvP2UBH"
    "p0pvjoajsTcM4Pk2GD4Y2se86TQwBNzQa5FiwN0cSN4RGYuJYycQsmndD1t2ptfoDbphOUs3l4xtOsbedhx8VfrU6bxz"
    "oZikqBcIt5CYl6Bv87yoXh6D9u3f1xrf/aB+/mTn1mwW9iUotJbSx2BU7//MurJiVm/ij94XJIbs6VaxD2G/DKkvm52F"
    "Tb2wv2rTc2M1b13sPAk5JMKPsADhfZSTA/TInlmuVbqz3LvOlUA3M6+71T9eOtXG2bwAPjFJOMpdC1xnObAd8eJ7RlBN"
    "vG6JoeIgxr26FGDXx0lCEhdpKK8K54vtW1YgSlSFJZQyfIoLzklur7SVggJ0NGk7VTPleCb17Tc5CG2OVCwGVY9yuTNZ"
    "8Yse6rdXuuVL4DVoDAWPVJq6/rv953rj4mguVleUbKUo6YPXSzJsHRvd3DOWMfSstpXYCX4I0FYhaDa6y/8G4kRiF+5n"
    "QH0sJfwRoCv1IyxjugjjewNacDJQA3dYz35NWSN0F6UZnrtbt3CWFQcCwlhCDWFJUIYjaIrmVKjI/w8tIILJ"
)


def test_batch_pickled_by_pandas_1_5(tmp_path: Path) -> None:
    path = tmp_path / "old.pickle"
    path.write_bytes(zlib.decompress(base64.b64decode(_PANDAS_1_5_BATCH)))
    specs = read_mesmerize_batch(path)
    assert [(s.algorithm, s.uuid) for s in specs] == [("mcorr", MCORR), ("cnmf", CNMF_A)]
    assert specs[0].input == {"movie": "mouse1/session1.tif"} and specs[1].input == {"item": MCORR}
    assert specs[1].params == {"main": {"K": 4, "gSig": (4, 4)}, "refit": True}
    assert specs[1].comments == "ok" and "2023-01-01 10:09:00" in specs[1].notes[0]


# ----------------------------------------------------------------------------- errors


def test_missing_columns_are_listed() -> None:
    df = pd.DataFrame({"algo": ["mcorr"], "item_name": ["a"]})
    with pytest.raises(MesmerizeBatchError, match="params, input_movie_path, uuid missing") as err:
        read_mesmerize_batch(df)
    assert "added_time" in str(err.value)  # says what a mesmerize batch has


def test_not_a_dataframe(tmp_path: Path) -> None:
    path = tmp_path / "dict.pickle"
    path.write_bytes(pickle.dumps({"algo": "mcorr"}))
    with pytest.raises(MesmerizeBatchError, match="holds a dict, not a pandas DataFrame"):
        read_mesmerize_batch(path)
    with pytest.raises(TypeError, match="DataFrame"):
        read_mesmerize_batch(42)


def test_unknown_algorithm_is_an_error() -> None:
    rows = _mesmerize_rows() + [_row("suite2p", "x", "x.tif", {}, "4f")]
    with pytest.raises(MesmerizeBatchError, match=r"row 4: 'suite2p'.*isin"):
        read_mesmerize_batch(_batch(rows))


def test_duplicate_uuid_is_an_error() -> None:
    rows = _mesmerize_rows()
    rows[2]["uuid"] = CNMF_A
    with pytest.raises(MesmerizeBatchError, match="same uuid"):
        read_mesmerize_batch(_batch(rows))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_mesmerize_batch(tmp_path / "nope.pickle")
    with pytest.raises(MesmerizeBatchError, match="is a folder"):
        read_mesmerize_batch(tmp_path)


def _marker_cmd(marker: Path) -> str:
    return f"touch {marker}"


@pytest.mark.parametrize("module, name, arg", [
    ("os", "system", "cmd"),
    ("posix", "system", "cmd"),
    ("builtins", "eval", "__import__('os').system('{cmd}')"),
    ("subprocess", "getoutput", "cmd"),
    ("pandas", "read_pickle", "{marker}.pickle"),           # a pandas function: unrestricted reading
    ("pandas", "HDFStore", "{marker}"),                     # a pandas class that writes files
    ("pandas.core.frame", "DataFrame.to_pickle", "{marker}"),  # a method through a dotted name
    ("pandas.core.frame", "functools", "x"),                 # a module imported by pandas
])
def test_malicious_pickle_is_refused_unexecuted(tmp_path: Path, module: str, name: str, arg: str) -> None:
    marker = tmp_path / "pwned"
    cmd = _marker_cmd(marker)
    arg = cmd if arg == "cmd" else arg.format(cmd=cmd, marker=marker)
    path = tmp_path / "evil.pickle"
    path.write_bytes(f"c{module}\n{name}\n(V{arg}\ntR.".encode())
    with pytest.raises(MesmerizeBatchError, match=rf"refused to load {module}\.{name}.*may not be a mesmerize batch"):
        read_mesmerize_batch(path)
    assert not marker.exists() and not Path(f"{marker}.pickle").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (_marker_cmd(self.marker),))


def test_code_hidden_in_a_batch_cell_is_refused(folders: tuple[Path, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rows = _mesmerize_rows()
    rows[1]["comments"] = _Evil(marker)
    path = folders[1] / "evil.pickle"
    _batch(rows).to_pickle(path)
    with pytest.raises(MesmerizeBatchError, match=rf"{path}: refused to load \w+\.system"):
        read_mesmerize_batch(path)
    assert not marker.exists()


def test_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.pickle"
    path.write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(MesmerizeBatchError, match="not a readable mesmerize-core batch"):
        read_mesmerize_batch(path)
