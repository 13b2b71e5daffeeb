"""NWB files that DANDI accepts: session/subject metadata from a YAML file and flags, validated
with one-line errors; ``--dandi`` refusing before any stage runs when required fields are
missing; plain ``--nwb`` warning; nwbinspector finding nothing critical on the written file."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

pytest.importorskip("pynwb")
nwbinspector = pytest.importorskip("nwbinspector")

from somascope import simulate  # noqa: E402
from somascope.cli import main  # noqa: E402
from somascope.io.nwb import (  # noqa: E402
    NWBMetadata,
    NWBMetadataError,
    nwb_metadata_template,
    read_nwb,
)
from somascope.pipeline import PipelineError, load_results, run  # noqa: E402
from somascope.pipeline.stages import STAGE_NAMES  # noqa: E402

RADIUS = 4.0
DANDI_FIELDS = ("subject_id", "species", "sex", "age", "session_start_time")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "nwb.md"


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 48×48×300 two-photon movie at 30 Hz (the NWB export is what is tested here)."""
    folder = tmp_path_factory.mktemp("dandi-movie")
    sim = simulate.two_photon(dims=(48, 48), n_frames=300, n_cells=6, motion="rigid", max_shift=2.0, seed=1)
    path = folder / "movie.tif"
    tifffile.imwrite(path, np.asarray(sim.movie, np.float32), imagej=True,
                     metadata={"axes": "TYX", "finterval": 1 / 30})
    return path


@pytest.fixture(scope="module")
def metadata_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template of docs/nwb.md, as a user would fill it in."""
    path = tmp_path_factory.mktemp("dandi-meta") / "session.yaml"
    path.write_text(nwb_metadata_template(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dandi_run(movie: Path, metadata_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("dandi-run") / "out"
    return run(movie, out, radius=RADIUS, engine="serial", progress=False, nwb_metadata=metadata_file, dandi=True)


def _copy(result: Any, tmp_path: Path) -> Path:
    dest = tmp_path / "out"
    shutil.copytree(result.out, dest)
    return dest


def _findings(path: Path, config: Any = None) -> Counter:
    messages = [m for m in nwbinspector.inspect_nwbfile(nwbfile_path=str(path), config=config) if m is not None]
    return Counter(m.importance.name for m in messages), messages


# -- the file -----------------------------------------------------------------------------------------
def test_file_with_full_metadata_passes_nwbinspector(dandi_run: Any) -> None:
    path = dandi_run.nwb_path
    assert path is not None and path.is_file()
    for config in (None, nwbinspector.load_config("dandi")):  # the defaults, and what `dandi validate` uses
        counts, messages = _findings(path, config)
        bad = [f"{m.importance.name} {m.check_function_name}: {m.message}" for m in messages
               if m.importance.name in ("CRITICAL", "BEST_PRACTICE_VIOLATION", "ERROR", "PYNWB_VALIDATION")]
        assert not bad, bad
    meta = read_nwb(path).metadata
    assert meta["subject_id"] == "mouse-042" and meta["species"] == "Mus musculus"
    assert meta["sex"] == "F" and meta["age"] == "P90D"
    assert dt.datetime.fromisoformat(meta["session_start_time"]) == dt.datetime(
        2024, 5, 1, 8, 30, tzinfo=dt.timezone.utc)
    assert meta["experimenter"] == ["Doe, Jane"] and meta["keywords"] == ["calcium imaging", "visual cortex"]
    assert meta["indicator"] == "GCaMP6f" and meta["location"] == "VISp"
    assert meta["institution"] == "University of Somewhere" and meta["excitation_lambda"] == 920.0
    # the metadata is in the results stage's manifest and in the provenance of results.h5
    manifest = json.loads((dandi_run.out / "stages" / "results" / "manifest.json").read_text())
    assert manifest["settings"]["nwb_metadata.species"] == "Mus musculus"
    prov = load_results(dandi_run.results_path).estimates.provenance
    assert prov["pipeline"]["nwb_metadata"]["subject_id"] == "mouse-042"


def test_other_metadata_reruns_only_the_results_stage_and_flags_override_the_file(
        dandi_run: Any, movie: Path, metadata_file: Path, tmp_path: Path) -> None:
    out = _copy(dandi_run, tmp_path)
    argv = ["run", str(movie), "--out", str(out), "--radius", str(RADIUS), "--scheduler", "serial", "-q",
            "--dandi", "--nwb-metadata", str(metadata_file), "--age", "P120D", "--keywords", "V1, mouse"]
    assert main(argv) == 0
    log = (out / "run.log").read_text()
    assert all(f"{name}: reused" in log for name in STAGE_NAMES[:-1])
    assert "nwb_metadata.age: P90D → P120D" in log
    meta = read_nwb(out / "results.nwb").metadata
    assert meta["age"] == "P120D" and meta["keywords"] == ["V1", "mouse"]  # the flags won
    assert meta["species"] == "Mus musculus"  # the rest came from the file


# -- refusals -----------------------------------------------------------------------------------------
def test_dandi_without_metadata_refuses_before_any_stage(movie: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "refused"
    t0 = time.perf_counter()
    with pytest.raises(PipelineError) as info:
        run(movie, out, radius=RADIUS, engine="serial", progress=False, dandi=True)
    assert time.perf_counter() - t0 < 5.0
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for name in DANDI_FIELDS:
        assert name in message, name
    assert "--nwb-metadata" in message and "--subject-id" in message
    assert not (out / "stages").exists()

    # the command line: one line, every missing field, the ones given are not listed
    assert main(["run", str(movie), "--out", str(out), "--radius", str(RADIUS), "--scheduler", "serial", "-q",
                 "--dandi", "--species", "Mus musculus", "--location", "VISp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("somascope: error: --dandi:"), err
    for name in ("subject_id", "sex", "age", "session_start_time"):
        assert name in err[0], name
    assert "species" not in err[0] and "location" not in err[0]
    assert not (out / "stages").exists()


def test_dandi_asks_mouse_data_for_an_allen_ccf_location() -> None:
    meta = NWBMetadata.from_dict(dict(subject_id="m1", species="Mus musculus", sex="M", age="P60D",
                                      session_start_time="2024-05-01T10:30:00Z"))
    assert meta.dandi_missing() == ["location (--location, mouse data: an Allen CCF term, e.g. VISp)"]
    assert "Allen Mouse Brain CCF" in meta.replace(location="V1").dandi_missing()[0]
    assert meta.replace(location="VISp").dandi_missing() == []
    assert meta.replace(species="Rattus norvegicus").dandi_missing() == []  # the CCF is for mice


@pytest.mark.parametrize(("flags", "needle"), [
    (["--species", "mouse"], "--species 'mouse' is not a Latin binomial or an NCBI taxonomy URI. Fix: write "
                             "'Mus musculus'"),
    (["--age", "90 days"], "--age '90 days' is not an ISO 8601 duration. Fix: write P90D"),
    (["--session-start-time", "2024-05-01T10:30:00"], "--session-start-time '2024-05-01T10:30:00' has no time "
                                                      "zone. Fix: add the offset"),
    (["--sex", "female"], "Fix: write 'F'"),
    (["--experimenter", "Jane Doe"], "Fix: write 'Doe, Jane'"),
])
def test_bad_values_are_one_line_errors_naming_the_fix(movie: Path, tmp_path: Path, flags: list[str], needle: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    assert main(["run", str(movie), "--out", str(out), "--scheduler", "serial", "-q", "--nwb", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("somascope: error: ") and needle in err[0], err
    assert not out.exists()


def test_bad_values_in_the_file_name_it_and_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "meta.yaml"
    path.write_text("species: mouse\nage: 90 days\nsession_start_time: 2024-05-01T10:30:00\nspeceis: x\n")
    with pytest.raises(NWBMetadataError) as info:
        NWBMetadata.load(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith("4 NWB metadata values are wrong")
    assert "species 'mouse' in meta.yaml is not a Latin binomial" in message
    assert "age '90 days' in meta.yaml" in message and "Fix: write P90D" in message
    assert "session_start_time '2024-05-01T10:30:00' in meta.yaml has no time zone" in message
    assert "unknown NWB metadata key 'speceis' in meta.yaml. Fix: did you mean 'species'?" in message
    assert {name for name, _ in info.value.problems} == {"species", "age", "session_start_time", "speceis"}


def test_values_are_normalised_and_checked() -> None:
    meta = NWBMetadata(sex="f", age="p90d", keywords="calcium imaging, V1", experimenter="Doe, Jane",
                       species="http://purl.obolibrary.org/obo/NCBITaxon_10090",
                       session_start_time="2024-05-01T10:30:00Z", excitation_lambda="920")
    assert meta.sex == "F" and meta.age == "P90D" and meta.keywords == ("calcium imaging", "V1")
    assert meta.experimenter == ("Doe, Jane",) and meta.is_mouse and meta.excitation_lambda == 920.0
    assert meta.session_start_time == dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.timezone.utc)
    assert NWBMetadata(age="P90D/").age == "P90D/" and NWBMetadata(age="P90D/P120D").age == "P90D/P120D"
    for kwargs, needle in (
        (dict(subject_id="a/b"), "contains '/'"),
        (dict(weight="25g"), "Fix: write '25 g'"),
        (dict(excitation_lambda=0.92), "not a wavelength in nm"),
        (dict(session_start_time="2999-01-01T00:00:00Z"), "is in the future"),
        (dict(session_start_time=dt.date(2024, 5, 1)), "a date without a time of day"),
        (dict(species="Caenorhabditis elegans", sex="M"), "XO (male) or XX"),
    ):
        with pytest.raises(NWBMetadataError, match=re.escape(needle)):
            NWBMetadata(**kwargs)


# -- plain --nwb ----------------------------------------------------------------------------------------
def test_plain_nwb_warns_once_and_writes(dandi_run: Any, movie: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(dandi_run, tmp_path)
    assert main(["run", str(movie), "--out", str(out), "--radius", str(RADIUS), "--scheduler", "serial", "-q",
                 "--nwb"]) == 0
    assert (out / "results.nwb").is_file()
    log = (out / "run.log").read_text()
    assert "nwb_metadata.age: P90D → null" in log  # the metadata went: only results reran
    assert all(f"{name}: reused" in log for name in STAGE_NAMES[:-1])
    warnings = [line for line in log.splitlines() if "WARNING" in line and "DANDI requires" in line]
    assert len(warnings) == 1, warnings
    for name in DANDI_FIELDS:
        assert name in warnings[0], name
    assert "--nwb-metadata" in warnings[0]
    counts, _ = _findings(out / "results.nwb")
    assert counts["CRITICAL"] == 1  # no Subject: what the warning said
    assert counts["BEST_PRACTICE_VIOLATION"] == 0  # the reference-image shape is fixed either way


# -- docs ---------------------------------------------------------------------------------------------------
def test_docs_hold_the_template_and_every_flag() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert nwb_metadata_template() in text
    for field in NWBMetadata.describe():
        assert f"`{field['flag']}`" in text, field["flag"]
    assert NWBMetadata.from_dict(__import__("yaml").safe_load(nwb_metadata_template())).dandi_missing() == []
