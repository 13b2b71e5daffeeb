"""Export somascope results to Neurodata Without Borders (NWB) files, and read them back.

:func:`export_nwb` writes one ``.nwb`` file (HDF5, NWB 2.x via ``pynwb``) holding the
components of an :class:`~somascope.cnmf.estimates.Estimates` (footprints as image masks,
traces, ΔF/F, deconvolved activity, quality metrics, the accepted/rejected split) and,
optionally, motion correction (shifts, template) and summary images, all in pynwb's standard
types so that any NWB reader (pynwb, MatNWB, NWB Widgets, DANDI tools) can open it.
:func:`read_nwb` rebuilds an ``Estimates`` and the rest from such a file.

:class:`NWBMetadata` defines the session, subject and imaging metadata a user can give (its
fields' meaning, validation, and which ones the DANDI archive requires); ``somascope run``
takes it from a YAML file (``--nwb-metadata``) and flags.

Layout (``docs/nwb.md`` has the full table)::

    /general/subject                                  Subject (from the metadata, when given)
    /general/devices/<device>                         Device
    /general/optophysiology/ImagingPlane              ImagingPlane (+ OpticalChannel)
    /acquisition/raw_movie                            TwoPhotonSeries, external file (movie_path)
    /processing/ophys/ImageSegmentation/PlaneSegmentation
        image_mask (K × H × W, or K × H × W × Z for volumes), accepted, snr, r_value, [cnn_pred]
    /processing/ophys/Fluorescence/{C, raw}           RoiResponseSeries, T × K
    /processing/ophys/DfOverF/dff                     RoiResponseSeries, T × K
    /processing/ophys/Deconvolved/spikes              RoiResponseSeries, T × K
    /processing/ophys/summary_images                  Images of GrayscaleImage
    /processing/ophys/motion_correction_images        Images: template, mean_image, mean_raw
    /processing/ophys/motion_shifts                   TimeSeries, T × ndim, pixels
    /processing/ophys/motion_patch_shifts             TimeSeries, T × n_patches × ndim, pixels
    /processing/ophys/motion_frame_corr               TimeSeries, T
    /scratch/somascope                                JSON: params, provenance, which fields

somascope keeps traces ``K × T``; NWB stores ``T × K``. The transposition happens here and
nowhere else. Values (masks, traces, metrics, shifts, images) are stored as float32.

``pynwb`` is imported only when these functions run, so ``import somascope`` stays light.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from somascope.io.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from somascope.cnmf.estimates import Estimates

__all__ = ["NWBContents", "NWBError", "NWBMetadata", "NWBMetadataError", "SCRATCH_NAME", "coerce_nwb_metadata",
           "export_nwb", "nwb_metadata_template", "read_nwb"]

#: Name of the scratch entry holding somascope's own metadata (JSON text).
SCRATCH_NAME = "somascope"
#: Format tag inside that JSON.
_FORMAT = "somascope-nwb/1"

_MODULE = "ophys"
_PLANE = "ImagingPlane"
_SEGMENTATION = "ImageSegmentation"
_PLANE_SEG = "PlaneSegmentation"
_FLUO = "Fluorescence"
_DFF = "DfOverF"
_DECONV = "Deconvolved"
_SUMMARY = "summary_images"
_MOTION_IMAGES = "motion_correction_images"
_SHIFTS = "motion_shifts"
_PATCH_SHIFTS = "motion_patch_shifts"
_FRAME_CORR = "motion_frame_corr"
_MOVIE = "raw_movie"
_MOTION_IMAGE_FIELDS = ("template", "mean_image", "mean_raw")
# Masks are written and read this many components at a time.
_MASK_BLOCK = 64
# Arrays with at least this many elements are gzip-compressed.
_COMPRESS_MIN = 4096
_PLANE_SUFFIX = re.compile(r"^(?P<name>.+)_z(?P<z>\d+)$")


class NWBError(ValueError):
    """Inputs cannot be exported to NWB, or a file is not a readable somascope NWB file."""


@dataclass
class NWBContents:
    """What :func:`read_nwb` rebuilds from an NWB file.

    Attributes
    ----------
    estimates : Estimates
        ``A`` (csc, pixels × K, C order of ``dims``), ``dims``, ``C``, ``YrA`` (raw − C),
        ``S``, ``F_dff`` (all K × T float32, ``None`` where absent), ``SNR_comp``,
        ``r_values``, ``cnn_preds``, ``idx_components``/``idx_components_bad``,
        ``frame_rate`` (Hz), and ``params``/``provenance``/``seed`` when somascope wrote the file.
    shifts : ndarray ``T × ndim`` float32 or None
        Rigid displacements, px, ``(dy, dx)`` / ``(dz, dy, dx)`` (``docs/conventions.md``).
    template : ndarray ``dims`` float32 or None
        Motion-correction template.
    summary : dict of str → ndarray ``dims`` float32
        Summary images by name (``mean``, ``corr``, …).
    metadata : dict
        Session and acquisition metadata (``session_description``, ``identifier``,
        ``session_start_time`` (ISO 8601), ``experimenter``, ``lab``, ``institution``,
        ``device``, ``indicator``, ``location``, ``excitation_lambda``, ``emission_lambda``
        (nm), ``imaging_rate`` (Hz), ``grid_spacing_um`` (``dims`` order, or None),
        ``movie_path`` (the external movie resolved against the NWB file's folder, or None),
        ``movie_path_at_export``) plus somascope's own record (``border_pix``,
        ``motion_metrics``, ``patch_grid``, ``written_by``) and the motion arrays
        ``mean_image``, ``mean_raw`` (``dims``) and ``frame_corr`` (``T``) where present.
    patch_shifts : ndarray ``T × n_patches × ndim`` float32 or None
        Piecewise-rigid patch displacements, px, patches in C order of the patch grid.
    """

    estimates: Estimates
    shifts: np.ndarray | None
    template: np.ndarray | None
    summary: dict[str, np.ndarray]
    metadata: dict[str, Any]
    patch_shifts: np.ndarray | None = None


# ============================================================================ session metadata
#
# One table, the dataclass below, defines every session/subject field a user can give: its
# meaning, an example, whether DANDI requires it, and (through its kind or a check of its own)
# how it is validated. The YAML file of ``somascope run --nwb-metadata``, the command-line flags
# (``--subject-id`` for ``subject_id``, …), the template in docs/nwb.md and the DANDI preflight
# are all derived from it.

#: DANDI's form of a person's name ("Last, First"), as nwbinspector checks it.
_NAME_FORM = re.compile(r"^([\w\s\-\.']+),\s+([\w\s\-\.']+)$")
#: A species: Latin binomial ("Mus musculus") or an NCBI taxonomy URI (nwbinspector's forms).
_SPECIES_FORM = re.compile(r"([A-Z][a-z]* [a-z]+)|(http://purl\.obolibrary\.org/obo/NCBITaxon_\d+)")
#: An ISO 8601 duration (P90D, P12W, P2Y6M, PT36H) — the form DANDI takes for an age.
_DURATION = re.compile(
    r"P(?!$)(\d+(?:\.\d+)?Y)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?W)?(\d+(?:\.\d+)?D)?"
    r"(T(?=\d)(\d+(?:\.\d+)?H)?(\d+(?:\.\d+)?M)?(\d+(?:\.\d+)?S)?)?"
)
_WEIGHT_FORM = re.compile(r"^\d+(\.\d+)? (kg|g|mg|ug|μg|ng|pg)$")
_SEXES = {"M": "male", "F": "female", "U": "unknown", "O": "other"}
_C_ELEGANS = ("Caenorhabditis elegans", "http://purl.obolibrary.org/obo/NCBITaxon_6239")
_MOUSE = ("Mus musculus", "http://purl.obolibrary.org/obo/NCBITaxon_10090")
#: Common names → Latin binomial, only to suggest the fix for a common name.
_COMMON_SPECIES = {
    "mouse": "Mus musculus", "mice": "Mus musculus", "rat": "Rattus norvegicus", "human": "Homo sapiens",
    "zebrafish": "Danio rerio", "macaque": "Macaca mulatta", "rhesus macaque": "Macaca mulatta",
    "marmoset": "Callithrix jacchus", "fly": "Drosophila melanogaster", "fruit fly": "Drosophila melanogaster",
    "drosophila": "Drosophila melanogaster", "worm": "Caenorhabditis elegans",
    "c. elegans": "Caenorhabditis elegans", "ferret": "Mustela furo", "cat": "Felis catus",
}
_AGE_UNITS = {"y": "Y", "yr": "Y", "year": "Y", "month": "M", "mo": "M", "w": "W", "wk": "W", "week": "W",
              "d": "D", "day": "D", "h": "H", "hour": "H"}
_DEFAULT_SESSION_DESCRIPTION = "somascope calcium-imaging analysis"


def _meta(meaning: str, example: Any, *, group: str, kind: str = "text", dandi: bool = False) -> Any:
    return field(default=None, metadata={"meaning": meaning, "example": example, "group": group,
                                         "kind": kind, "dandi": dandi})


class NWBMetadataError(NWBError):
    """Session or subject metadata with bad values; one line naming each bad field and its fix.

    ``problems`` holds one ``(field, message)`` per bad field.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        texts = [text for _, text in self.problems]
        if len(texts) == 1:
            message = texts[0]
        else:
            message = f"{len(texts)} NWB metadata values are wrong: " + "; ".join(t.rstrip(".") for t in texts) + "."
        super().__init__(message)


class _Bad(ValueError):
    """A value a check refuses: ``issue`` (what is wrong) and ``fix``."""

    def __init__(self, issue: str, fix: str) -> None:
        super().__init__(issue)
        self.issue, self.fix = issue, fix


@dataclass(frozen=True)
class NWBMetadata:
    """Session, subject and imaging metadata for the NWB file, validated on construction.

    Every field is optional (None: not given). ``dandi`` in a field's metadata marks what the
    DANDI archive requires (:meth:`dandi_missing`). Build one with keywords, from a dict
    (:meth:`from_dict`) or from a YAML/JSON file plus overrides (:meth:`from_sources`); bad
    values raise :class:`NWBMetadataError` naming each field and its fix. ``docs/nwb.md`` has
    the YAML template (:func:`nwb_metadata_template`).
    """

    # -- subject ---------------------------------------------------------------------------------
    subject_id: str | None = _meta("identifier of the animal (DANDI names files after it; no '/')",
                                   "mouse-042", group="subject", dandi=True)
    species: str | None = _meta("Latin binomial or NCBI taxonomy URI (not a common name)", "Mus musculus",
                                group="subject", dandi=True)
    sex: str | None = _meta("M (male), F (female), U (unknown) or O (other)", "F", group="subject", dandi=True)
    age: str | None = _meta("age at the session, ISO 8601 duration: P90D = 90 days, P12W, P2Y; a range "
                            "P90D/P120D", "P90D", group="subject", dandi=True)
    strain: str | None = _meta("strain of the animal", "C57BL/6J", group="subject")
    genotype: str | None = _meta("genotype of the animal", "Thy1-GCaMP6f", group="subject")
    weight: str | None = _meta("weight at the session: number, space, unit (kg, g, mg)", "25 g", group="subject")
    subject_description: str | None = _meta("anything else about the animal", "head-fixed, window over V1",
                                            group="subject")
    # -- session ---------------------------------------------------------------------------------
    session_start_time: _dt.datetime | None = _meta(
        "when the recording started, ISO 8601 with a time zone (Z for UTC)", "2024-05-01T10:30:00+02:00",
        group="session", kind="datetime", dandi=True)
    session_description: str | None = _meta("what this session is", "two-photon imaging of V1, drifting gratings",
                                            group="session")
    experiment_description: str | None = _meta("what the experiment is about",
                                               "orientation tuning of layer 2/3 neurons", group="session")
    session_id: str | None = _meta("identifier of the session (no '/')", "ses-01", group="session")
    experimenter: tuple[str, ...] | None = _meta("who did it, 'Last, First' (one or more)", ["Doe, Jane"],
                                                 group="session", kind="list")
    lab: str | None = _meta("lab", "Doe lab", group="session")
    institution: str | None = _meta("institution", "University of Somewhere", group="session")
    keywords: tuple[str, ...] | None = _meta("keywords for search (a list, or one string split at commas)",
                                             ["calcium imaging", "visual cortex"], group="session", kind="list")
    # -- imaging ---------------------------------------------------------------------------------
    indicator: str | None = _meta("calcium indicator", "GCaMP6f", group="imaging")
    location: str | None = _meta("imaging plane location, the brain area (mouse: an Allen CCF term)", "VISp",
                                 group="imaging")
    excitation_lambda: float | None = _meta("excitation wavelength, nm", 920, group="imaging", kind="nm")
    emission_lambda: float | None = _meta("emission wavelength, nm", 510, group="imaging", kind="nm")

    def __post_init__(self) -> None:
        problems = []
        for name in self.field_names():
            raw = getattr(self, name)
            if raw is None:
                continue
            try:
                value = _check_value(name, raw)
            except _Bad as bad:
                problems.append((name, _problem(name, raw, bad)))
                value = None
            object.__setattr__(self, name, value)
        if self.sex is not None and self.species is not None:
            try:
                _check_sex_for_species(self.sex, self.species)
            except _Bad as bad:
                problems.append(("sex", _problem("sex", self.sex, bad)))
        if problems:
            raise NWBMetadataError(problems)

    # -- the table -----------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One dict per field: ``name``, ``flag``, ``meaning``, ``example``, ``group``, ``kind``,
        ``dandi`` (True where the DANDI archive requires it)."""
        return [{"name": f.name, "flag": flag_of(f.name), **f.metadata} for f in fields(cls)]

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | None = None,
                  flags: bool = False) -> NWBMetadata:
        """Validated metadata from ``{field: value}`` (None values are ignored). ``source`` (a
        file name) or ``flags`` (the values came from command-line flags) go into the messages."""
        return cls.from_sources(None, values, flags=flags, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NWBMetadata:
        """Validated metadata from a YAML or JSON file of ``field: value`` lines."""
        return cls.from_sources(path)

    @classmethod
    def from_sources(cls, file: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None,
                     *, flags: bool = False, source: str | None = None) -> NWBMetadata:
        """Metadata from a YAML/JSON ``file``, then ``overrides`` (command-line flags when
        ``flags``), the later winning field by field; every bad value is reported at once."""
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        if file is not None:
            path = Path(file).expanduser()
            for key, value in _read_metadata_file(path).items():
                if key not in cls.field_names():
                    problems.append((key, _unknown_key(key, path.name)))
                elif value is not None:
                    values[key], origin[key] = value, f"in {path.name}"
        for key, value in dict(overrides or {}).items():
            if key not in cls.field_names():
                problems.append((key, _unknown_key(key, source)))
            elif value is not None:
                values[key] = value
                origin[key] = "flag" if flags else (f"in {source}" if source else "")
        for name in list(values):  # check field by field, to say where each bad value came from
            try:
                _check_value(name, values[name])
            except _Bad as bad:
                problems.append((name, _problem(name, values.pop(name), bad, origin.get(name, ""))))
        if problems:
            raise NWBMetadataError(problems)
        try:
            return cls(**values)
        except NWBMetadataError as err:  # across fields (sex of C. elegans)
            raise NWBMetadataError([(n, f"{t.rstrip('.')} ({origin.get(n, '')})." if origin.get(n) else t)
                                    for n, t in err.problems]) from None

    def replace(self, **changes: Any) -> NWBMetadata:
        """A copy with ``changes`` (validated; None leaves a field as it is)."""
        return NWBMetadata(**{**self.to_values(), **{k: v for k, v in changes.items() if v is not None}})

    # -- reading it back -----------------------------------------------------------------------
    def to_values(self) -> dict[str, Any]:
        """The given fields, as Python values (datetime, tuples)."""
        return {name: getattr(self, name) for name in self.field_names() if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """The given fields as JSON-able values (times in ISO 8601, lists)."""
        out: dict[str, Any] = {}
        for name, value in self.to_values().items():
            if isinstance(value, _dt.datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @property
    def is_mouse(self) -> bool:
        return self.species in _MOUSE

    def dandi_missing(self) -> list[str]:
        """What the DANDI archive needs that is not given: one entry per field, with its flag and an
        example. For mice also an imaging-plane ``location`` from the Allen Mouse Brain CCF (NWB
        best practice, checked by nwbinspector). Empty when the metadata is complete."""
        missing = []
        for f in fields(self):
            if f.metadata["dandi"] and getattr(self, f.name) is None:
                missing.append(f"{f.name} ({flag_of(f.name)}, e.g. {_example_text(f.metadata['example'])})")
        if self.is_mouse:
            terms = _allen_ccf_terms()
            if self.location is None:
                missing.append("location (--location, mouse data: an Allen CCF term, e.g. VISp)")
            elif terms is not None and self.location not in terms:
                missing.append(f"location {self.location!r} is not an Allen Mouse Brain CCF term (--location: an "
                               "acronym or full name, e.g. VISp or 'Primary visual area')")
        return missing

    def subject_kwargs(self) -> dict[str, Any] | None:
        """Arguments of ``pynwb.file.Subject`` (None when no subject field is given)."""
        names = {"subject_id": "subject_id", "species": "species", "sex": "sex", "age": "age", "strain": "strain",
                 "genotype": "genotype", "weight": "weight", "subject_description": "description"}
        kwargs = {nwb: getattr(self, ours) for ours, nwb in names.items() if getattr(self, ours) is not None}
        return kwargs or None


def flag_of(name: str) -> str:
    """The command-line flag of a metadata field: ``subject_id`` → ``--subject-id``."""
    return "--" + name.replace("_", "-")


def nwb_metadata_template() -> str:
    """A YAML file of every metadata field with its example value and meaning (docs/nwb.md)."""
    import yaml

    lines = ["# somascope NWB metadata: somascope run movie.tif --out OUT --dandi --nwb-metadata this.yaml",
             "# Fields marked [DANDI] are required by the DANDI archive; leave out what you do not know."]
    group = None
    for f in fields(NWBMetadata):
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines.append(f"# -- {group}")
        value = yaml.safe_dump({f.name: f.metadata["example"]}, default_flow_style=True, allow_unicode=True,
                               width=200).strip()[1:-1]
        if f.metadata["kind"] == "datetime":  # keep it a string in the template: ISO text with its zone
            value = f"{f.name}: {f.metadata['example']}"
        mark = "[DANDI] " if f.metadata["dandi"] else ""
        lines.append(f"{value}  # {mark}{f.metadata['meaning']}")
    return "\n".join(lines) + "\n"


def _example_text(example: Any) -> str:
    return ", ".join(map(str, example)) if isinstance(example, list) else str(example)


def _unknown_key(key: Any, where: str | None) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), NWBMetadata.field_names(), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(NWBMetadata.field_names()) + "."
    if isinstance(key, str) and key in ("subject", "session", "imaging"):
        hint = "the file is flat: write subject_id:, species:, … at the top level."
    return f"unknown NWB metadata key {key!r}{f' in {where}' if where else ''}. Fix: {hint}"


def _problem(name: str, raw: Any, bad: _Bad, origin: str = "") -> str:
    shown = raw.isoformat() if isinstance(raw, (_dt.date, _dt.datetime)) else raw
    if isinstance(shown, (list, tuple)) and len(shown) == 1:  # one repeatable flag, one list item
        shown = shown[0]
    if origin == "flag":
        label = f"{flag_of(name)} {shown!r}"
    else:
        label = f"{name} {shown!r}" + (f" {origin}" if origin else "")
    return f"{label} {bad.issue}. Fix: {bad.fix}."


def _read_metadata_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NWBMetadataError([("file", f"the NWB metadata file {str(path)!r} does not exist. Fix: check the "
                                          "path (a .yaml/.yml or .json file; template in docs/nwb.md).")])
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NWBMetadataError([("file", f"cannot read the NWB metadata file {path.name}: {first}. Fix: write "
                                          "one 'field: value' per line (template in docs/nwb.md).")]) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise NWBMetadataError([("file", f"{path.name} holds no mapping of metadata. Fix: write one 'field: value' "
                                          "per line, e.g. 'species: Mus musculus' (template in docs/nwb.md).")])
    return dict(data)


# -- checks of single values ------------------------------------------------------------------------
def _check_value(name: str, raw: Any) -> Any:
    check = _FIELD_CHECKS.get(name)
    kind = NWBMetadata.__dataclass_fields__[name].metadata["kind"]
    value = _KIND_CHECKS[kind](raw)
    return check(value) if check is not None else value


def _text(raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise _Bad(f"is a {type(raw).__name__}, not text", "give one text value")
    text = str(raw).strip()
    if not text:
        raise _Bad("is empty", "give a value or leave the field out")
    return text


def _text_list(raw: Any) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else raw
    if not isinstance(items, (list, tuple)):
        raise _Bad(f"is a {type(raw).__name__}", "give text or a list of texts")
    out = tuple(_text(item) for item in items)
    if not out:
        raise _Bad("is an empty list", "give at least one value or leave the field out")
    return out


def _datetime(raw: Any) -> _dt.datetime:
    example = "2024-05-01T10:30:00+02:00 (or …Z for UTC)"
    if isinstance(raw, _dt.datetime):
        value = raw
    elif isinstance(raw, _dt.date):
        raise _Bad("is a date without a time of day and time zone", f"write e.g. {raw.isoformat()}T10:30:00+02:00")
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise _Bad("is not an ISO 8601 date and time", f"write e.g. {example}") from None
    else:
        raise _Bad(f"is a {type(raw).__name__}, not a date and time", f"write e.g. {example}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _Bad("has no time zone",
                   f"add the offset of where it was recorded, e.g. {value.isoformat()}+02:00 (or Z for UTC)")
    if value > _dt.datetime.now(_dt.timezone.utc):
        raise _Bad("is in the future", "give the time the recording started")
    return value


def _nm(raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise _Bad("is not a number", "give the wavelength in nm, e.g. 920") from None
    if not (math.isfinite(value) and 100.0 <= value <= 3000.0):
        raise _Bad("is not a wavelength in nm", "give it in nm, e.g. 920 (not 0.92 µm)")
    return value


_KIND_CHECKS = {"text": _text, "list": _text_list, "datetime": _datetime, "nm": _nm}


def _no_slash(value: str) -> str:
    if "/" in value:
        raise _Bad("contains '/', which breaks DANDI's file paths", f"write {value.replace('/', '-')!r}")
    return value


def _species(value: str) -> str:
    if _SPECIES_FORM.fullmatch(value):
        return value
    latin = _COMMON_SPECIES.get(value.lower())
    if latin is not None:
        fix = f"write {latin!r} (the Latin binomial)"
    elif value[:1].islower() and len(value.split()) == 2:
        fix = f"write {value[:1].upper() + value[1:]!r} (genus capitalised)"
    else:
        fix = ("write the Latin binomial, e.g. 'Mus musculus', or an NCBI taxonomy URI, e.g. "
               "http://purl.obolibrary.org/obo/NCBITaxon_10090")
    return _raise(_Bad("is not a Latin binomial or an NCBI taxonomy URI", fix))


def _sex(value: str) -> str:
    upper = value.upper()
    if upper in _SEXES or upper in ("XO", "XX"):
        return upper
    by_word = {word: letter for letter, word in _SEXES.items()}
    letter = by_word.get(value.lower())
    fix = f"write {letter!r}" if letter else "write M (male), F (female), U (unknown) or O (other)"
    return _raise(_Bad("is not one of M, F, U, O", fix))


def _check_sex_for_species(sex: str, species: str) -> None:
    if species in _C_ELEGANS and sex not in ("XO", "XX"):
        raise _Bad("is not a sex of C. elegans", "write XO (male) or XX (hermaphrodite)")
    if species not in _C_ELEGANS and sex not in _SEXES:
        raise _Bad("is not one of M, F, U, O", "write M (male), F (female), U (unknown) or O (other)")


def _age(value: str) -> str:
    compact = value.replace(" ", "").upper()
    parts = compact.split("/")
    if len(parts) <= 2 and _DURATION.fullmatch(parts[0]) and (len(parts) == 1 or parts[1] == ""
                                                              or _DURATION.fullmatch(parts[1])):
        return compact
    fix = "write e.g. P90D (90 days), P12W (12 weeks) or P2Y; a range as P90D/P120D"
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]+?)s?", value.strip().lower())
    if m and m[2] in _AGE_UNITS:
        unit = _AGE_UNITS[m[2]]
        fix = f"write {'PT' if unit == 'H' else 'P'}{m[1]}{unit}"
    elif re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
        fix = f"add the unit, e.g. P{value.strip()}D for {value.strip()} days"
    return _raise(_Bad("is not an ISO 8601 duration", fix))


def _weight(value: str) -> str:
    if _WEIGHT_FORM.fullmatch(value):
        return value
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(kg|g|mg|ug|μg|ng|pg)", value.strip())
    fix = f"write {m[1] + ' ' + m[2]!r}" if m else "write a number, a space and a unit, e.g. '25 g'"
    return _raise(_Bad("is not '<number> <unit>'", fix))


def _experimenters(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not _NAME_FORM.fullmatch(name):
            words = name.split()
            fix = f"write {words[-1] + ', ' + ' '.join(words[:-1])!r}" if len(words) >= 2 else "write 'Last, First'"
            raise _Bad("is not in DANDI's 'Last, First' form" if len(value) == 1
                       else f"has {name!r}, not in DANDI's 'Last, First' form", fix)
    return value


def _keywords(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for item in value for part in item.split(",") if part.strip())


def _raise(bad: _Bad) -> Any:
    raise bad


_FIELD_CHECKS = {"subject_id": _no_slash, "session_id": _no_slash, "species": _species, "sex": _sex, "age": _age,
                 "weight": _weight, "experimenter": _experimenters, "keywords": _keywords}


def _allen_ccf_terms() -> frozenset[str] | None:
    """The Allen Mouse Brain CCF terms nwbinspector checks mouse locations against (None when
    nwbinspector is not installed)."""
    try:
        from nwbinspector._internal_configs._allen_ccf import get_allen_ccf_location_terms
    except Exception:  # not installed, or another version's layout
        return None
    try:
        return frozenset(get_allen_ccf_location_terms())
    except Exception:  # pragma: no cover - a broken installation
        return None


def coerce_nwb_metadata(value: Any) -> NWBMetadata | None:
    """``NWBMetadata`` from an NWBMetadata, a dict of fields, or the path of a YAML/JSON file."""
    if value is None or isinstance(value, NWBMetadata):
        return value
    if isinstance(value, Mapping):
        return NWBMetadata.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        return NWBMetadata.load(value)
    raise NWBError(f"NWB metadata must be an NWBMetadata, a dict or the path of a YAML/JSON file, got "
                   f"{type(value).__name__}.")


# ============================================================================ helpers


def _pynwb() -> Any:
    """Import pynwb, or raise an ImportError that says how to install it."""
    try:
        import pynwb
    except ImportError as err:
        raise ImportError(
            "NWB export and import need the 'pynwb' package, which is not installed; "
            "install it with `pip install pynwb`."
        ) from err
    return pynwb


def _f32(arr: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(arr, dtype=np.float32))


def _dataio(data: Any, shape: Sequence[int] | None = None) -> Any:
    """Wrap an array for gzip compression when it is large enough to be worth it."""
    from hdmf.backends.hdf5 import H5DataIO

    n = math.prod(shape if shape is not None else np.shape(data))
    if n < _COMPRESS_MIN:
        return data
    return H5DataIO(data, compression="gzip", compression_opts=4, shuffle=True)


def _mask_axes(dims: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one NWB image mask: ``(H, W)`` for 2-D, ``(H, W, Z)`` for ``(Z, H, W)``."""
    return dims if len(dims) == 2 else (dims[1], dims[2], dims[0])


def _to_mask_layout(block: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """``(n, *dims)`` images → ``(n, *mask_axes)`` NWB masks."""
    return block if len(dims) == 2 else np.moveaxis(block, 1, -1)


def _from_mask_layout(block: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """``(n, *mask_axes)`` NWB masks → ``(n, *dims)`` images."""
    return block if len(dims) == 2 else np.moveaxis(block, -1, 1)


def _iter_masks(A: Any, dims: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Dense float32 image masks, one per column of ``A`` (C order of ``dims``), in NWB layout.

    Columns are densified ``_MASK_BLOCK`` at a time, so memory stays ``_MASK_BLOCK × pixels``.
    """
    K = A.shape[1]
    for k0 in range(0, K, _MASK_BLOCK):
        block = A[:, k0 : k0 + _MASK_BLOCK].T.toarray().astype(np.float32, copy=False)
        block = _to_mask_layout(block.reshape((-1, *dims)), dims)
        for mask in block:
            yield np.ascontiguousarray(mask)


def _masks_to_csc(dataset: Any, dims: tuple[int, ...]) -> Any:
    """Read NWB image masks ``(K, *mask_axes)`` block by block into a csc pixels × K matrix."""
    import scipy.sparse as sp

    K = int(dataset.shape[0])
    n_pix = math.prod(dims)
    cols = []
    for k0 in range(0, K, _MASK_BLOCK):
        block = np.asarray(dataset[k0 : k0 + _MASK_BLOCK], dtype=np.float32)
        block = _from_mask_layout(block, dims).reshape(block.shape[0], n_pix)
        cols.append(sp.csc_matrix(block.T))
    if not cols:
        return sp.csc_matrix((n_pix, 0), dtype=np.float32)
    return sp.hstack(cols, format="csc").astype(np.float32)


def _plane_images(name: str, image: np.ndarray, dims: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """An image of shape ``dims`` as NWB 2-D images: itself, or one ``{name}_z{z:03d}`` per plane."""
    if len(dims) == 2:
        return [(name, image)]
    return [(f"{name}_z{z:03d}", image[z]) for z in range(dims[0])]


def _gather_planes(images: Mapping[str, np.ndarray], dims: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Inverse of :func:`_plane_images` over a whole ``Images`` container."""
    if len(dims) == 2:
        return {k: v for k, v in images.items()}
    planes: dict[str, dict[int, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for key, img in images.items():
        m = _PLANE_SUFFIX.match(key)
        if m is None:
            out[key] = img
            continue
        planes.setdefault(m["name"], {})[int(m["z"])] = img
    for name, by_z in planes.items():
        if sorted(by_z) == list(range(dims[0])):
            out[name] = np.stack([by_z[z] for z in range(dims[0])])
        else:  # an incomplete stack: hand the planes back as they are
            out.update({f"{name}_z{z:03d}": img for z, img in by_z.items()})
    return out


def _start_time(value: _dt.datetime | None) -> _dt.datetime:
    """A timezone-aware start time; naive times are taken as local time."""
    if value is None:
        return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    if not isinstance(value, _dt.datetime):
        raise NWBError(
            f"session_start_time must be a datetime.datetime, got {type(value).__name__}; "
            "e.g. datetime.datetime(2024, 5, 1, 10, 30, tzinfo=datetime.timezone.utc)."
        )
    return value if value.tzinfo is not None else value.astimezone()


def _grid_spacing(grid_spacing_um: Any, dims: tuple[int, ...]) -> tuple[float, ...] | None:
    """Pixel size in µm per axis of ``dims`` (a scalar applies to every axis)."""
    if grid_spacing_um is None:
        return None
    values = np.atleast_1d(np.asarray(grid_spacing_um, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, len(dims))
    if values.shape != (len(dims),) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise NWBError(
            f"grid_spacing_um={grid_spacing_um!r} must be a positive pixel size in µm, or one "
            f"per axis of dims {dims} (in that order, e.g. (dy, dx))."
        )
    return tuple(float(v) for v in values)


def _positive_rate(value: Any, where: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise NWBError(f"{where}={value!r} is not a number of Hz.") from None
    if not (math.isfinite(rate) and rate > 0):
        raise NWBError(f"{where}={value!r} must be a positive frame rate in Hz.")
    return rate


# ============================================================================ checks


def _check_estimates(estimates: Any) -> tuple[tuple[int, ...], int, int]:
    """Validate the estimates; return ``(dims, K, T)``."""
    import scipy.sparse as sp

    missing = [n for n in ("A", "dims", "C") if not hasattr(estimates, n)]
    if missing:
        raise NWBError(
            f"export_nwb needs a somascope Estimates, got {type(estimates).__name__} "
            f"(no {', '.join(missing)}); pass the result of cnmf.fit or Estimates.load(path)."
        )
    if estimates.A is None:
        raise NWBError("the estimates have no footprints (A is None); nothing to export.")
    if estimates.C is None:
        raise NWBError(
            "the estimates have no traces (C is None); export needs the temporal traces — "
            "run the temporal update (cnmf.fit) before exporting."
        )
    try:
        dims = tuple(int(d) for d in estimates.dims)
    except (TypeError, ValueError):
        raise NWBError(f"estimates.dims={estimates.dims!r} is not a tuple of ints.") from None
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise NWBError(
            f"estimates.dims={dims!r} must be (H, W) or (Z, H, W) with positive sizes."
        )
    A = estimates.A
    if not sp.issparse(A) or A.ndim != 2 or A.shape[0] != math.prod(dims):
        raise NWBError(
            f"estimates.A (shape {getattr(A, 'shape', None)}) must be a sparse pixels × K "
            f"matrix with {math.prod(dims)} rows for dims {dims}."
        )
    if hasattr(estimates, "validate"):
        estimates.validate()
    K = int(A.shape[1])
    C = np.asarray(estimates.C)
    if C.ndim != 2 or C.shape[0] != K:
        raise NWBError(f"estimates.C has shape {C.shape}; it must be K × T = ({K}, T).")
    return dims, K, int(C.shape[1])


def _motion_arrays(motion: Any, dims: tuple[int, ...], T: int) -> dict[str, Any]:
    """Pull and check what is exported from a MotionResult(-like) object."""
    if motion is None:
        return {}
    if not hasattr(motion, "shifts"):
        raise NWBError(
            f"motion must be a somascope.motion.MotionResult (with .shifts), got "
            f"{type(motion).__name__}."
        )
    ndim = len(dims)
    shifts = _f32(motion.shifts)
    if shifts.shape != (T, ndim):
        raise NWBError(
            f"motion.shifts has shape {shifts.shape} but the traces have T={T} frames of "
            f"{ndim}-D data; expected ({T}, {ndim}). Export the motion result of the same movie."
        )
    out: dict[str, Any] = {"shifts": shifts}
    for name in _MOTION_IMAGE_FIELDS:
        img = getattr(motion, name, None)
        if img is None:
            continue
        img = _f32(img)
        if img.shape != dims:
            raise NWBError(f"motion.{name} has shape {img.shape} but the estimates' dims are {dims}.")
        out[name] = img
    patch = getattr(motion, "patch_shifts", None)
    if patch is not None:
        patch = _f32(patch)
        if patch.ndim < 3 or patch.shape[0] != T or patch.shape[-1] != ndim:
            raise NWBError(
                f"motion.patch_shifts has shape {patch.shape}; expected ({T}, n_patches, {ndim}) "
                f"or ({T}, *grid, {ndim})."
            )
        out["patch_shifts"] = patch.reshape(T, -1, ndim)  # grid flattened in C order
    frame_corr = getattr(motion, "frame_corr", None)
    if frame_corr is not None and np.shape(frame_corr) == (T,):
        out["frame_corr"] = _f32(frame_corr)
    grid = getattr(motion, "patch_grid", None)
    if grid is not None and hasattr(grid, "to_dict"):
        out["patch_grid"] = grid.to_dict()
    border = getattr(motion, "border_pix", None)
    out["border_pix"] = None if border is None else [int(b) for b in np.atleast_1d(border)]
    out["metrics"] = getattr(motion, "metrics", None) or {}
    return out


def _summary_images(summary: Any, dims: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Images of a SummaryImages (or a dict of name → image), checked against ``dims``."""
    if summary is None:
        return {}
    if hasattr(summary, "images"):
        images = summary.images()
    elif isinstance(summary, Mapping):
        images = dict(summary)
    else:
        raise NWBError(
            f"summary must be a somascope.summary.SummaryImages or a dict of images, got "
            f"{type(summary).__name__}."
        )
    out = {}
    for name, img in images.items():
        if img is None:
            continue
        if not isinstance(name, str) or not name or "/" in name:
            raise NWBError(f"summary image name {name!r} must be a non-empty string without '/'.")
        arr = _f32(img)
        if arr.shape != dims:
            raise NWBError(
                f"summary image {name!r} has shape {arr.shape} but the estimates' dims are {dims}."
            )
        out[name] = arr
    return out


# ============================================================================ export


def export_nwb(
    path: str | os.PathLike[str],
    estimates: Estimates,
    *,
    motion: Any = None,
    summary: Any = None,
    movie_path: str | os.PathLike[str] | None = None,
    metadata: NWBMetadata | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    session_description: str | None = None,
    session_start_time: _dt.datetime | None = None,
    identifier: str | None = None,
    experimenter: str | Sequence[str] | None = None,
    lab: str | None = None,
    institution: str | None = None,
    indicator: str | None = None,
    excitation_lambda: float | None = None,
    emission_lambda: float | None = None,
    imaging_rate: float | None = None,
    location: str | None = None,
    device: str = "microscope",
    grid_spacing_um: float | Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``estimates`` (and optional motion and summary images) to an NWB file.

    Parameters
    ----------
    path
        Output ``.nwb`` file. Written atomically: a crash leaves no file that looks complete.
    estimates
        :class:`~somascope.cnmf.estimates.Estimates` with ``A`` (pixels × K) and ``C`` (K × T);
        ``dims`` ``(H, W)`` or ``(Z, H, W)``. ``YrA``, ``S``, ``F_dff``, quality metrics and the
        accepted/rejected split are written when present.
    motion
        :class:`~somascope.motion.MotionResult` of the same movie: ``shifts`` (T × ndim, px),
        ``template``, ``patch_shifts``, … (see ``docs/nwb.md``).
    summary
        :class:`~somascope.summary.SummaryImages` (or a dict name → image of shape ``dims``).
    movie_path
        The movie the results came from; recorded as an external-file ``TwoPhotonSeries``
        ``acquisition/raw_movie`` (path relative to the NWB file's folder; no data copied).
    metadata
        Session, subject and imaging metadata: an :class:`NWBMetadata`, a dict of its fields or
        the path of a YAML/JSON file of them (validated; ``docs/nwb.md`` has the template). The
        subject fields make the file's ``Subject``; the others fill the arguments below that are
        not given (an argument given explicitly wins).
    session_description, session_start_time, identifier, experimenter, lab, institution
        NWB session metadata. ``session_start_time`` defaults to now (UTC) and naive
        datetimes are taken as local time; ``identifier`` defaults to a fresh UUID;
        ``session_description`` to "somascope calcium-imaging analysis".
    indicator, excitation_lambda, emission_lambda, location, device
        Imaging-plane metadata (wavelengths in nm; NaN when unknown; indicator and location
        "unknown" when not given).
    imaging_rate
        Frame rate in Hz; defaults to ``estimates.frame_rate``. All series use it.
    grid_spacing_um
        Pixel size in µm, one value or one per axis of ``dims``; stored in metres in the
        imaging plane in the image-mask axis order ``(H, W[, Z])``.
    overwrite
        Replace an existing file at ``path`` (otherwise that is an error).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ImportError
        If pynwb is not installed.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    NWBError
        For estimates without A or C, wrong dims, shapes that disagree, no frame rate.
    """
    pynwb = _pynwb()
    final = Path(path).expanduser()
    if final.is_dir():
        raise NWBError(f"{str(final)!r} is a folder; pass the path of the .nwb file to write.")
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"{str(final)!r} already exists; pass overwrite=True to replace it, or choose "
            "another path."
        )
    meta = coerce_nwb_metadata(metadata) or NWBMetadata()
    dims, K, T = _check_estimates(estimates)
    if imaging_rate is not None:
        rate = _positive_rate(imaging_rate, "imaging_rate")
    elif getattr(estimates, "frame_rate", None) is not None:
        rate = _positive_rate(estimates.frame_rate, "estimates.frame_rate")
    else:
        raise NWBError(
            "no frame rate: estimates.frame_rate is None and imaging_rate was not given; "
            "pass imaging_rate=<Hz> to export_nwb."
        )
    motion_data = _motion_arrays(motion, dims, T)
    images = _summary_images(summary, dims)
    spacing = _grid_spacing(grid_spacing_um, dims)
    nwbfile = _build_nwbfile(
        pynwb,
        estimates,
        dims=dims,
        K=K,
        T=T,
        rate=rate,
        motion=motion_data,
        images=images,
        movie_path=movie_path,
        nwb_folder=final.absolute().parent,
        spacing=spacing,
        session=dict(
            session_description=str(_pick(session_description, meta.session_description,
                                          _DEFAULT_SESSION_DESCRIPTION)),
            session_start_time=_start_time(_pick(session_start_time, meta.session_start_time, None)),
            identifier=str(identifier) if identifier is not None else str(uuid.uuid4()),
            experimenter=_as_list(_pick(experimenter, meta.experimenter, None)),
            lab=_pick(lab, meta.lab, None),
            institution=_pick(institution, meta.institution, None),
            experiment_description=meta.experiment_description,
            session_id=meta.session_id,
            keywords=_as_list(meta.keywords),
        ),
        plane=dict(
            indicator=str(_pick(indicator, meta.indicator, "unknown")),
            excitation_lambda=float(_pick(excitation_lambda, meta.excitation_lambda, float("nan"))),
            emission_lambda=float(_pick(emission_lambda, meta.emission_lambda, float("nan"))),
            location=str(_pick(location, meta.location, "unknown")),
            device=str(device),
        ),
        subject=meta.subject_kwargs(),
    )
    if final.suffix.lower() != ".nwb":
        warnings.warn(
            f"{str(final)!r} does not end in '.nwb'; NWB tools expect that extension.",
            UserWarning,
            stacklevel=2,
        )
    with atomic_path(final) as tmp, warnings.catch_warnings():
        # The temporary name (".{name}.partial-…") never ends in .nwb; the final one was checked.
        warnings.filterwarnings("ignore", message=r"The file path provided: .* does not end in '\.nwb'")
        with pynwb.NWBHDF5IO(str(tmp), mode="w") as io:
            io.write(nwbfile)
    return final


def _pick(given: Any, from_metadata: Any, default: Any) -> Any:
    """An argument given explicitly, else the metadata's value, else the default."""
    if given is not None:
        return given
    return default if from_metadata is None else from_metadata


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _build_nwbfile(
    pynwb: Any,
    est: Any,
    *,
    dims: tuple[int, ...],
    K: int,
    T: int,
    rate: float,
    motion: dict[str, Any],
    images: dict[str, np.ndarray],
    movie_path: Any,
    nwb_folder: Path,
    spacing: tuple[float, ...] | None,
    session: dict[str, Any],
    plane: dict[str, Any],
    subject: dict[str, Any] | None = None,
) -> Any:
    """Assemble the in-memory ``NWBFile`` (nothing is written yet)."""
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel

    session = {k: v for k, v in session.items() if v is not None}
    if subject:
        session["subject"] = Subject(**subject)
    nwbfile = pynwb.NWBFile(**session)
    device = nwbfile.create_device(name=plane["device"], description="imaging device")
    channel = OpticalChannel(
        name="OpticalChannel",
        description="imaging channel",
        emission_lambda=plane["emission_lambda"],
    )
    mask_shape = _mask_axes(dims)
    plane_kwargs: dict[str, Any] = {}
    if spacing is not None:
        spacing_mask = spacing if len(dims) == 2 else (spacing[1], spacing[2], spacing[0])
        plane_kwargs = {"grid_spacing": [s * 1e-6 for s in spacing_mask], "grid_spacing_unit": "meters"}
    imaging_plane = nwbfile.create_imaging_plane(
        name=_PLANE,
        optical_channel=channel,
        description=(
            f"imaging plane of {'x'.join(map(str, mask_shape))} pixels (axes "
            f"{'(H, W)' if len(dims) == 2 else '(H, W, Z)'}, as in the image masks)"
        ),
        device=device,
        excitation_lambda=plane["excitation_lambda"],
        indicator=plane["indicator"],
        location=plane["location"],
        imaging_rate=rate,
        **plane_kwargs,
    )
    movie_series = None
    movie_record = None
    if movie_path is not None:
        movie_series, movie_record = _external_movie(
            pynwb, movie_path, nwb_folder, imaging_plane, dims, T, rate, spacing
        )
        nwbfile.add_acquisition(movie_series)

    module = nwbfile.create_processing_module(
        name=_MODULE, description="somascope: motion correction, source extraction (CNMF), traces"
    )
    # The masks' reference images (mean, correlation) live in an Images container. The
    # schema's PlaneSegmentation.reference_images link takes only ImageSeries, and neither
    # candidate passes nwbinspector: the external raw movie holds no data in the file (shape
    # (0, 0), not the masks' shape), and a one-frame ImageSeries of the mean image is flagged as
    # time on the wrong axis (a critical finding). So the link is left empty and the
    # segmentation's description names the images.
    references = [f"{_SUMMARY}/{k}" for k in ("mean", "corr") if k in images]
    if not references:
        references = [f"{_MOTION_IMAGES}/{k}" for k in ("mean_image", "template") if k in motion]
    plane_seg = _add_segmentation(module, est, dims, K, imaging_plane, references)
    present = _add_traces(module, est, plane_seg, K, rate)
    if images:
        _add_images(pynwb, module, _SUMMARY, images, dims,
                    "summary images of the movie (float32; movie units except corr, max_corr, "
                    "corr_pnr: correlation, and pnr: ratio)")
    if motion:
        _add_motion(pynwb, module, motion, dims, rate)

    record = _scratch_record(est, dims, present, motion, movie_record, spacing)
    nwbfile.add_scratch(
        json.dumps(record, allow_nan=True),
        name=SCRATCH_NAME,
        description="somascope metadata (JSON): software version, parameters, provenance, "
        "which estimates fields were exported, motion metrics",
    )
    return nwbfile


def _external_movie(
    pynwb: Any,
    movie_path: Any,
    nwb_folder: Path,
    imaging_plane: Any,
    dims: tuple[int, ...],
    T: int,
    rate: float,
    spacing: tuple[float, ...] | None,
) -> tuple[Any, dict[str, str]]:
    """An external-file TwoPhotonSeries pointing at the movie (no data copied)."""
    from pynwb.ophys import TwoPhotonSeries

    absolute = Path(movie_path).expanduser().absolute()
    try:
        stored = os.path.relpath(absolute, nwb_folder)
    except ValueError:  # another drive (Windows)
        stored = str(absolute)
    mask_shape = _mask_axes(dims)
    kwargs: dict[str, Any] = {}
    if spacing is not None:
        spacing_mask = spacing if len(dims) == 2 else (spacing[1], spacing[2], spacing[0])
        kwargs["field_of_view"] = [n * s * 1e-6 for n, s in zip(mask_shape, spacing_mask)]
    series = TwoPhotonSeries(
        name=_MOVIE,
        imaging_plane=imaging_plane,
        external_file=[stored],
        format="external",
        starting_frame=[0],
        num_samples=T,
        dimension=list(mask_shape),
        rate=rate,
        starting_time=0.0,
        unit="a.u.",
        description=(
            f"the raw movie the results were computed from, stored outside this file: "
            f"{stored!r} relative to the NWB file's folder (absolute when written: {str(absolute)!r}); "
            "somascope movies are T x H x W (T x Z x H x W for volumes)"
        ),
    )
    return series, {"movie_path": str(absolute)}


def _add_segmentation(module: Any, est: Any, dims: tuple[int, ...], K: int,
                      imaging_plane: Any, references: Sequence[str]) -> Any:
    """ImageSegmentation/PlaneSegmentation with image masks and per-component columns."""
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import ElementIdentifiers, VectorData
    from hdmf.data_utils import DataChunkIterator
    from pynwb.ophys import ImageSegmentation, PlaneSegmentation

    mask_shape = _mask_axes(dims)
    if K:
        masks: Any = H5DataIO(
            DataChunkIterator(
                data=_iter_masks(est.A, dims),
                maxshape=(K, *mask_shape),
                dtype=np.dtype(np.float32),
                buffer_size=_MASK_BLOCK,
            ),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            chunks=(1, *mask_shape),
        )
    else:
        masks = np.zeros((0, *mask_shape), dtype=np.float32)
    accepted = np.zeros(K, dtype=bool)
    if est.idx_components is not None:
        accepted[est.idx_components] = True
    elif est.idx_components_bad is not None:
        accepted[:] = True
        accepted[est.idx_components_bad] = False
    else:
        accepted[:] = True

    def per_component(name: str) -> np.ndarray:
        value = getattr(est, name, None)
        return np.full(K, np.nan, np.float32) if value is None else _f32(value)

    layout = "(H, W)" if len(dims) == 2 else "(H, W, Z) (somascope's (Z, H, W) moved to last axis)"
    columns = [
        VectorData(
            name="image_mask",
            description=f"footprint of each component, a.u.; column k of A reshaped to {layout}",
            data=masks,
        ),
        VectorData(name="accepted", description="True if the component passed quality "
                   "evaluation (somascope idx_components)", data=accepted),
        VectorData(name="snr", description="trace signal-to-noise ratio (SNR_comp); NaN if not "
                   "computed", data=per_component("SNR_comp")),
        VectorData(name="r_value", description="spatial consistency r-value (r_values); NaN if "
                   "not computed", data=per_component("r_values")),
    ]
    if est.cnn_preds is not None:
        columns.append(VectorData(name="cnn_pred", description="CNN probability of being a cell",
                                  data=per_component("cnn_preds")))
    if est.seeded is not None:
        columns.append(VectorData(name="seeded", description="True if the cell was seeded from a structural "
                                  "channel's mask (somascope seeded)", data=np.asarray(est.seeded, bool)))
    if est.activity is not None:
        columns.append(VectorData(name="activity", description="a seeded cell's own activity z: largest transient "
                                  "of its neuropil-subtracted trace, noise deviations; NaN if unseeded (somascope "
                                  "activity)", data=per_component("activity")))
    if est.silent is not None:
        columns.append(VectorData(name="silent", description="True for a seeded cell that showed no activity "
                                  "(a silent cell: accepted and flagged; somascope silent)",
                                  data=np.asarray(est.silent, bool)))
    segmentation = ImageSegmentation(name=_SEGMENTATION)
    module.add(segmentation)
    description = "somascope CNMF components (row k = component k of the Estimates)"
    if references:
        paths = ", ".join(f"processing/{_MODULE}/{r}" for r in references)
        description += f"; reference images of the masks (same pixels): {paths}"
    plane_seg = PlaneSegmentation(
        name=_PLANE_SEG,
        description=description,
        imaging_plane=imaging_plane,
        id=ElementIdentifiers(name="id", data=np.arange(K, dtype=np.int64)),
        columns=columns,
    )
    segmentation.add_plane_segmentation(plane_seg)
    return plane_seg


def _add_traces(module: Any, est: Any, plane_seg: Any, K: int, rate: float) -> list[str]:
    """RoiResponseSeries (T × K float32) for C, raw, dff and spikes; return the fields written."""
    from pynwb.ophys import DfOverF, Fluorescence

    region = list(range(K))

    def series(container: Any, name: str, traces: np.ndarray, unit: str, description: str) -> None:
        data = _f32(np.asarray(traces).T)  # K × T → T × K, the one transposition
        container.create_roi_response_series(
            name=name,
            data=_dataio(data),
            rois=plane_seg.create_roi_table_region(description="all components", region=region),
            unit=unit,
            rate=rate,
            starting_time=0.0,
            description=description,
        )

    present = ["C"]
    fluorescence = Fluorescence(name=_FLUO)
    module.add(fluorescence)
    series(fluorescence, "C", est.C, "a.u.", "denoised calcium traces C (movie intensity x "
           "footprint scale), T x K")
    if est.YrA is not None:
        present.append("YrA")
        raw = np.asarray(est.C, dtype=np.float64) + np.asarray(est.YrA, dtype=np.float64)
        series(fluorescence, "raw", raw, "a.u.", "raw traces C + YrA (denoised trace plus "
               "residual), same scale as C, T x K")
    if est.F_dff is not None:
        present.append("F_dff")
        dff = DfOverF(name=_DFF)
        module.add(dff)
        series(dff, "dff", est.F_dff, "1", "Delta F / F as a fraction (not percent), T x K")
    if est.S is not None:
        present.append("S")
        deconv = Fluorescence(name=_DECONV)
        module.add(deconv)
        series(deconv, "spikes", est.S, "a.u.", "deconvolved activity S (spike estimates, "
               "same scale as C), T x K")
    for name in ("SNR_comp", "r_values", "cnn_preds", "activity", "seeded", "silent", "idx_components",
                 "idx_components_bad"):
        if getattr(est, name, None) is not None:
            present.append(name)
    return present


def _add_images(pynwb: Any, module: Any, name: str, images: dict[str, np.ndarray],
                dims: tuple[int, ...], description: str) -> None:
    """An ``Images`` container of GrayscaleImages (volumes: one image per plane, ``_zNNN``)."""
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage

    grays = []
    for key, img in images.items():
        for plane_name, plane_img in _plane_images(key, img, dims):
            grays.append(GrayscaleImage(name=plane_name, data=_dataio(_f32(plane_img)),
                                        description=f"{key} image, float32, axes (H, W)"))
    module.add(Images(name=name, images=grays, description=description))


def _add_motion(pynwb: Any, module: Any, motion: dict[str, Any], dims: tuple[int, ...],
                rate: float) -> None:
    """Shifts (and patch shifts, frame correlations) as TimeSeries; template etc. as images."""
    axes = ("dy", "dx") if len(dims) == 2 else ("dz", "dy", "dx")
    convention = (
        "sign convention: a displacement d says where the content of a frame moved relative to "
        "the template, frame(p) ~ template(p - d); a cell at p0 in the template appears at "
        "p0 + d in the frame; correcting samples the frame at p + d"
    )
    border = motion.get("border_pix")
    def series(name: str, data: np.ndarray, unit: str, description: str) -> None:
        module.add(pynwb.TimeSeries(name=name, data=_dataio(data), unit=unit, rate=rate,
                                    starting_time=0.0, description=description))

    series(_SHIFTS, motion["shifts"], "pixels", (
        f"rigid motion displacement of each frame, T x {len(axes)}, columns "
        f"({', '.join(axes)}) in pixels along the array axes "
        f"({'rows, columns' if len(dims) == 2 else 'planes, rows, columns'}); {convention}"
        + (f"; border_pix={border}" if border is not None else "")
    ))
    if "patch_shifts" in motion:
        patch = motion["patch_shifts"]
        grid = motion.get("patch_grid")
        grid_text = ""
        if grid is not None:
            grid_shape = [len(s) for s in grid["starts"]]
            grid_text = (f"; patch grid shape {grid_shape} (patch size {grid['patch_shape']} px, "
                         f"first pixels per axis {grid['starts']})")
        series(_PATCH_SHIFTS, patch, "pixels", (
            f"piecewise-rigid displacement of each patch, T x n_patches x {len(axes)} "
            f"(n_patches = {patch.shape[1]}), patches in C (row-major) order of the patch "
            f"grid, last axis ({', '.join(axes)}) in pixels{grid_text}; {convention}"
        ))
    if "frame_corr" in motion:
        series(_FRAME_CORR, motion["frame_corr"], "1",
               "Pearson correlation of each motion-corrected frame with the template")
    motion_images = {k: motion[k] for k in _MOTION_IMAGE_FIELDS if k in motion}
    if motion_images:
        _add_images(pynwb, module, _MOTION_IMAGES, motion_images, dims,
                    "motion correction: template every frame was registered to (template), mean "
                    "of the corrected frames (mean_image) and of the raw frames (mean_raw)")


def _scratch_record(est: Any, dims: tuple[int, ...], present: list[str], motion: dict[str, Any],
                    movie_record: dict[str, str] | None, spacing: tuple[float, ...] | None) -> dict:
    """somascope's own record, stored as JSON in ``/scratch/somascope``."""
    from somascope import __version__
    from somascope.io.jsonable import jsonable

    K = est.A.shape[1]
    accepted = set(range(K))
    if est.idx_components is not None:
        accepted = set(est.idx_components.tolist())
    elif est.idx_components_bad is not None:
        accepted -= set(est.idx_components_bad.tolist())
    rejected_explicit = None
    if est.idx_components_bad is not None:
        bad = est.idx_components_bad.tolist()
        if set(bad) != set(range(K)) - accepted:
            rejected_explicit = bad
    return jsonable({
        "format": _FORMAT,
        "written_by": __version__,
        "software_version": getattr(est, "software_version", None),
        "dims": list(dims),
        "mask_layout": "(H, W)" if len(dims) == 2 else "(H, W, Z)",
        "fields": present,
        "idx_components_bad": rejected_explicit,
        "seed": getattr(est, "seed", None),
        "params": getattr(est, "params", None),
        "provenance": getattr(est, "provenance", None) or {},
        "grid_spacing_um": None if spacing is None else list(spacing),
        "border_pix": motion.get("border_pix"),
        "motion_metrics": motion.get("metrics"),
        "patch_grid": motion.get("patch_grid"),
        **(movie_record or {}),
    })


# ============================================================================ read


def read_nwb(path: str | os.PathLike[str]) -> NWBContents:
    """Rebuild somascope results from an NWB file written by :func:`export_nwb`.

    Files from other tools load too when they follow the same layout (a ``processing/ophys``
    module with an ``ImageSegmentation`` holding image masks and ``Fluorescence`` traces).

    Returns
    -------
    NWBContents
        ``estimates`` (A csc pixels × K in C order of ``dims``; traces K × T float32),
        ``shifts``, ``template``, ``summary``, ``metadata`` and ``patch_shifts``.

    Raises
    ------
    ImportError
        If pynwb is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    NWBError
        If the file is not NWB or lacks the segmentation or the traces.
    """
    pynwb = _pynwb()
    import h5py

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"NWB file {str(p)!r} does not exist.")
    if not h5py.is_hdf5(p):
        raise NWBError(f"{str(p)!r} is not an HDF5 file, so not an NWB file written by export_nwb.")
    try:
        io = pynwb.NWBHDF5IO(str(p), mode="r")
    except Exception as err:  # pynwb raises many types for unreadable files
        raise NWBError(f"cannot open {str(p)!r} as an NWB file: {err}") from err
    with io:
        try:
            nwbfile = io.read()
        except Exception as err:
            raise NWBError(f"cannot read {str(p)!r} as an NWB file: {err}") from err
        return _contents(nwbfile, p)


def _get(container: Any, name: str, what: str, path: Path) -> Any:
    try:
        return container[name]
    except (KeyError, ValueError):
        raise NWBError(
            f"{str(path)!r} has no {what} {name!r}; it was not written by somascope.export_nwb "
            "(or by a tool using the same layout)."
        ) from None


def _traces(container: Any, name: str) -> np.ndarray | None:
    """A RoiResponseSeries as K × T float32, or None when absent."""
    if container is None or name not in container.roi_response_series:
        return None
    data = np.asarray(container.roi_response_series[name].data[()], dtype=np.float32)
    return np.ascontiguousarray(data.T)


def _optional(module: Any, name: str) -> Any:
    return module.data_interfaces.get(name)


def _contents(nwbfile: Any, path: Path) -> NWBContents:
    from somascope.cnmf.estimates import Estimates

    record = _read_record(nwbfile)
    module = _get(nwbfile.processing, _MODULE, "processing module", path)
    segmentation = _get(module, _SEGMENTATION, "data interface", path)
    segs = segmentation.plane_segmentations
    if _PLANE_SEG not in segs and len(segs) == 1:
        plane_seg = next(iter(segs.values()))
    else:
        plane_seg = _get(segs, _PLANE_SEG, "PlaneSegmentation", path)
    if "image_mask" not in plane_seg.colnames:
        raise NWBError(f"{str(path)!r}: the PlaneSegmentation has no image_mask column; "
                       "read_nwb needs image masks.")
    mask_ds = plane_seg["image_mask"].data
    mask_shape = tuple(int(s) for s in mask_ds.shape[1:])
    dims = tuple(record.get("dims") or ())
    if not dims:
        dims = mask_shape if len(mask_shape) == 2 else (mask_shape[2], mask_shape[0], mask_shape[1])
    if _mask_axes(dims) != mask_shape:
        raise NWBError(f"{str(path)!r}: image masks of shape {mask_shape} do not match dims {dims}.")
    A = _masks_to_csc(mask_ds, dims)
    K = A.shape[1]

    fluorescence = _optional(module, _FLUO)
    C = _traces(fluorescence, "C")
    if C is None:
        raise NWBError(f"{str(path)!r} has no Fluorescence/C RoiResponseSeries (the traces).")
    raw = _traces(fluorescence, "raw")
    fields = set(record.get("fields") or ["C", "YrA", "F_dff", "S", "SNR_comp", "r_values",
                                          "cnn_preds", "idx_components", "idx_components_bad"])
    rate = float(fluorescence.roi_response_series["C"].rate)

    def column(name: str, field_name: str) -> np.ndarray | None:
        if name not in plane_seg.colnames or field_name not in fields:
            return None
        values = np.asarray(plane_seg[name].data[()], dtype=np.float32)
        return None if "fields" not in record and np.all(np.isnan(values)) else values

    def flags(name: str) -> np.ndarray | None:
        return np.asarray(plane_seg[name].data[()], dtype=bool) if name in plane_seg.colnames else None

    idx_good = idx_bad = None
    if "accepted" in plane_seg.colnames:
        accepted = np.asarray(plane_seg["accepted"].data[()], dtype=bool)
        if "idx_components" in fields:
            idx_good = np.flatnonzero(accepted)
        if record.get("idx_components_bad") is not None:
            idx_bad = np.asarray(record["idx_components_bad"], dtype=np.int64)
        elif "idx_components_bad" in fields:
            idx_bad = np.flatnonzero(~accepted)
    estimates = Estimates(
        A=A,
        dims=dims,
        C=C,
        YrA=None if raw is None else raw - C,
        S=_traces(_optional(module, _DECONV), "spikes"),
        F_dff=_traces(_optional(module, _DFF), "dff"),
        SNR_comp=column("snr", "SNR_comp"),
        r_values=column("r_value", "r_values"),
        cnn_preds=column("cnn_pred", "cnn_preds"),
        activity=column("activity", "activity"),
        seeded=flags("seeded"),
        silent=flags("silent"),
        idx_components=idx_good,
        idx_components_bad=idx_bad,
        frame_rate=rate,
        params=record.get("params"),
        seed=record.get("seed"),
        software_version=record.get("software_version"),
        provenance=record.get("provenance") or {},
    )
    if estimates.K != K:  # pragma: no cover - Estimates would have refused already
        raise NWBError(f"{str(path)!r}: inconsistent number of components.")

    summary = _read_images(_optional(module, _SUMMARY), dims)
    motion_images = _read_images(_optional(module, _MOTION_IMAGES), dims)
    shifts = _read_series(_optional(module, _SHIFTS))
    patch_shifts = _read_series(_optional(module, _PATCH_SHIFTS))
    frame_corr = _read_series(_optional(module, _FRAME_CORR))
    metadata = _metadata(nwbfile, record, path)
    for key in ("mean_image", "mean_raw"):
        if key in motion_images:
            metadata[key] = motion_images[key]
    if frame_corr is not None:
        metadata["frame_corr"] = frame_corr
    return NWBContents(
        estimates=estimates,
        shifts=shifts,
        template=motion_images.get("template"),
        summary=summary,
        metadata=metadata,
        patch_shifts=patch_shifts,
    )


def _read_record(nwbfile: Any) -> dict[str, Any]:
    """somascope's JSON record from ``/scratch``, or ``{}`` for files from other tools."""
    try:
        scratch = nwbfile.scratch[SCRATCH_NAME]
    except (KeyError, ValueError, AttributeError):
        return {}
    text = scratch.data
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        record = json.loads(str(text))
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _read_images(container: Any, dims: tuple[int, ...]) -> dict[str, np.ndarray]:
    if container is None:
        return {}
    raw = {name: np.asarray(img.data[()], dtype=np.float32) for name, img in container.images.items()}
    return _gather_planes(raw, dims)


def _read_series(series: Any) -> np.ndarray | None:
    return None if series is None else np.asarray(series.data[()], dtype=np.float32)


def _str_list(values: Any) -> list[str] | None:
    if values is None:
        return None
    items = values[()] if hasattr(values, "shape") else values  # an HDF5 dataset, or a list
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]


def _metadata(nwbfile: Any, record: dict[str, Any], path: Path) -> dict[str, Any]:
    plane = nwbfile.imaging_planes.get(_PLANE) or next(iter(nwbfile.imaging_planes.values()), None)
    meta: dict[str, Any] = {
        "session_description": nwbfile.session_description,
        "identifier": nwbfile.identifier,
        "session_start_time": nwbfile.session_start_time.isoformat(),
        "experimenter": list(nwbfile.experimenter) if nwbfile.experimenter is not None else None,
        "lab": nwbfile.lab,
        "institution": nwbfile.institution,
        "experiment_description": nwbfile.experiment_description,
        "session_id": nwbfile.session_id,
        "keywords": _str_list(nwbfile.keywords),
    }
    subject = nwbfile.subject
    for ours, theirs in (("subject_id", "subject_id"), ("species", "species"), ("sex", "sex"), ("age", "age"),
                         ("strain", "strain"), ("genotype", "genotype"), ("weight", "weight"),
                         ("subject_description", "description")):
        meta[ours] = None if subject is None else getattr(subject, theirs, None)
    if plane is not None:
        channel = plane.optical_channel[0] if plane.optical_channel else None
        meta.update(
            device=plane.device.name,
            indicator=plane.indicator,
            location=plane.location,
            excitation_lambda=float(plane.excitation_lambda),
            emission_lambda=float(channel.emission_lambda) if channel is not None else float("nan"),
            imaging_rate=None if plane.imaging_rate is None else float(plane.imaging_rate),
        )
    meta["grid_spacing_um"] = (
        tuple(record["grid_spacing_um"]) if record.get("grid_spacing_um") is not None else None
    )
    # The external file is stored relative to the NWB file's folder (NWB best practice), so
    # it is resolved against where the file is now; the absolute path at export is kept too.
    movie = nwbfile.acquisition.get(_MOVIE)
    meta["movie_path"] = None
    if movie is not None and movie.external_file is not None and len(movie.external_file):
        stored = movie.external_file[0]
        stored = stored.decode("utf-8") if isinstance(stored, bytes) else str(stored)
        meta["movie_path"] = str((path.absolute().parent / stored).resolve())
    if record.get("movie_path") is not None:
        meta["movie_path_at_export"] = record["movie_path"]
    for key in ("border_pix", "motion_metrics", "patch_grid", "written_by"):
        if record.get(key) is not None:
            meta[key] = record[key]
    return meta
