"""Tests of somascope.params: aliases, CaImAn/Mesmerize dicts, validation, derived defaults,
round trips, diff and replace."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest

from somascope.params import (
    IGNORED_KEYS,
    K_PER_NEURON_AREA,
    MotionParams,
    ParameterError,
    Params,
)


def get(p: Params, dotted: str):
    group, name = dotted.split(".")
    return getattr(getattr(p, group), name)


# ----------------------------------------------------------------------------- defaults


def test_static_defaults_are_the_rules_at_the_default_neuron():
    plain = Params()
    assert plain == Params.from_dict({})
    assert plain == Params.from_neuron(radius_px=5, fr=30, decay_time=0.4)
    # the motion defaults other engineers code against
    m = plain.motion
    assert (m.pw_rigid, m.max_shifts, m.strides, m.overlaps) == ("auto", (6, 6), (24, 24), (12, 12))
    assert (m.max_deviation_rigid, m.upsample_factor, m.upsample_factor_grid) == (3, 10, 4)
    assert (m.niter_rig, m.chunk_frames, m.border_mode, m.gSig_filt, m.is3D) == (
        1, 200, "copy", None, False)
    d = plain.deconvolution
    assert (d.p, d.s_min, d.bas_nonneg, d.noise_range, d.noise_method) == (
        1, None, False, (0.25, 0.5), "mean")
    assert (d.lags, d.fudge_factor, d.optimize_g, d.method_deconvolution) == (10, 0.98, 0, "oasis")


# ----------------------------------------------------------------------------- derived defaults


def test_derived_defaults_scale_with_neuron_radius():
    small = Params.from_neuron(radius_px=4, fr=30, decay_time=0.4)
    large = Params.from_neuron(radius_px=8, fr=30, decay_time=0.4)
    assert small.init.gSig == (4.0, 4.0) and large.init.gSig == (8.0, 8.0)
    assert small.init.gSiz == (9, 9) and large.init.gSiz == (17, 17)  # 2·gSig + 1, odd
    assert small.patch.rf == (36, 36) and large.patch.rf == (68, 68)  # 4·gSiz
    assert small.patch.stride == (9, 9) and large.patch.stride == (17, 17)
    assert small.motion.max_shifts == (5, 5) and large.motion.max_shifts == (10, 10)
    assert small.motion.strides == (24, 24) and large.motion.strides == (40, 40)
    assert large.motion.overlaps == (20, 20)
    assert small.init.ssub == 1 and large.init.ssub == 3
    # the number of components per patch follows patch area / neuron area, not the radius
    for p, r in ((small, 4), (large, 8)):
        assert p.init.K == round(K_PER_NEURON_AREA * (2 * p.patch.rf[0]) ** 2 / (np.pi * r**2))
    assert abs(small.init.K - large.init.K) <= 0.15 * large.init.K  # gSiz rounds up: a bit more patch per neuron when small


def test_derived_defaults_scale_with_pixel_size():
    coarse = Params.from_neuron(radius_um=6.0, dxy=1.5)
    fine = Params.from_neuron(radius_um=6.0, dxy=0.75)
    assert coarse.data.neuron_radius == (4.0, 4.0)
    assert fine.data.neuron_radius == (8.0, 8.0)
    assert fine.init.gSig == tuple(2 * g for g in coarse.init.gSig)
    assert all(abs(f - 2 * c) <= 8 for f, c in zip(fine.motion.strides, coarse.motion.strides))  # multiples of 8 px
    # anisotropic pixels: the radius in px differs per axis
    aniso = Params.from_neuron(radius_um=6.0, dxy=(1.0, 0.5))
    assert aniso.init.gSig == (6.0, 12.0)
    assert aniso.init.gSiz == (13, 25)


def test_frame_rate_and_decay_time_set_the_snr_window_and_temporal_downsampling():
    slow = Params.from_neuron(radius_px=5, fr=10, decay_time=0.4)
    fast = Params.from_neuron(radius_px=5, fr=60, decay_time=1.0)
    assert slow.quality.N_samples_exceptionality == 4
    assert fast.quality.N_samples_exceptionality == 60
    assert slow.init.tsub == 1 and fast.init.tsub == 10
    assert Params().quality.N_samples_exceptionality == 12  # not 13 from 30·0.4 rounding


def test_one_photon_defaults():
    p = Params.from_neuron(radius_px=6, is_1p=True)
    assert p.init.method == "greedy_corr"
    assert p.init.gSig == (3.0, 3.0) and p.init.gSiz == (13, 13)  # CNMF-E's filter and box
    assert p.init.nb == 0 and p.patch.nb_patch == 0 and not p.init.normalize_init
    assert p.motion.gSig_filt == p.init.gSig  # high-pass before registration
    assert p.patch.rf == (39, 39) and p.patch.stride == (13, 13)  # one neuron box of overlap, as for 2p


def test_given_values_win_over_rules_and_gsig_sets_the_radius():
    p = Params.from_dict({"gSig": [4, 4], "rf": 25, "max_shifts": [10, 10]})
    assert p.data.neuron_radius == (4.0, 4.0)
    assert p.init.gSiz == (9, 9)
    assert p.patch.rf == (25, 25)
    assert p.motion.max_shifts == (10, 10)
    assert p.motion.strides == (24, 24)  # still derived from the radius


def test_volumes_get_three_axis_values():
    p = Params.from_dict({"is3D": True, "neuron_radius": [2, 5, 5]})
    assert p.ndim == 3
    assert p.data.dxy == (1.0, 1.0, 1.0)
    assert p.init.gSig == (2.0, 5.0, 5.0)
    assert len(p.motion.max_shifts) == len(p.patch.rf) == 3
    assert len(p.init.sigma_smooth_snmf) == 4
    # three-entry values alone make it a volume
    assert Params.from_dict({"gSig": (2, 4, 4)}).motion.is3D


# ----------------------------------------------------------------------------- aliases

ALIASES = [
    ({"k": 7}, "init.K", 7),
    ({"K": 7}, "init.K", 7),
    ({"merge_thresh": 0.7}, "merge.merge_thr", 0.7),
    ({"merge_thr": 0.7}, "merge.merge_thr", 0.7),
    ({"gnb": 2}, "init.nb", 2),
    ({"nb": 2}, "init.nb", 2),
    ({"gSig": 3}, "init.gSig", (3.0, 3.0)),
    ({"gSiz": [9, 9]}, "init.gSiz", (9, 9)),
    ({"rf": 20}, "patch.rf", (20, 20)),
    ({"rf": None}, "patch.rf", None),
    ({"stride": 8}, "patch.stride", (8, 8)),
    ({"p": 2}, "deconvolution.p", 2),
    ({"min_SNR": 3.0}, "quality.min_SNR", 3.0),
    ({"rval_thr": 0.9}, "quality.rval_thr", 0.9),
    ({"min_cnn_thr": 0.95}, "quality.min_cnn_thr", 0.95),
    ({"cnn_lowest": 0.2}, "quality.cnn_lowest", 0.2),
    ({"decay_time": 1.2}, "data.decay_time", 1.2),
    ({"border_pix": 4}, "patch.border_pix", 4),
    ({"fr": 15}, "data.fr", 15.0),
    ({"dxy": [0.8, 0.8]}, "data.dxy", (0.8, 0.8)),
    ({"dxy": 2}, "data.dxy", (2.0, 2.0)),
    ({"ssub": 1}, "init.ssub", 1),
    ({"tsub": 3}, "init.tsub", 3),
    ({"method_init": "corr_pnr"}, "init.method", "greedy_corr"),
    ({"method_init": "greedy_pnr"}, "init.method", "greedy_corr"),
    ({"method_init": "sparse_nmf"}, "init.method", "sparse_nmf"),
    ({"method_init": "greedy_roi"}, "init.method", "rolling_greedy_roi"),  # CaImAn rolls by default
    ({"method_init": "greedy_roi", "rolling_sum": False}, "init.method", "greedy_roi"),
    ({"rolling_sum": True}, "init.method", "rolling_greedy_roi"),
    ({"border_nan": True}, "motion.border_mode", "nan"),
    ({"border_nan": False}, "motion.border_mode", "zero"),
    ({"border_nan": "copy"}, "motion.border_mode", "copy"),
    ({"num_frames_split": 80}, "motion.chunk_frames", 80),
    ({"only_init_patch": False}, "patch.only_init", False),
    ({"center_psf": True}, "data.is_1p", True),
    ({"neuron_radius_um": 6, "dxy": 2}, "data.neuron_radius", (3.0, 3.0)),
    ({"max_comp_update_shape": float("inf")}, "online.max_comp_update_shape", None),
    ({"optimize_g": False}, "deconvolution.optimize_g", 0),
    ({"refit": True}, "quality.refit", True),
    ({"s_min": -0.5}, "deconvolution.s_min", -0.5),
    ({"s_min": "auto"}, "deconvolution.s_min", "auto"),
    ({"s_min": None}, "deconvolution.s_min", None),
    ({"merging": {"thr": 0.75}}, "merge.merge_thr", 0.75),
    ({"online": {"max_shifts": 12}}, "online.max_shifts_online", 12),
    ({"motion.pw_rigid": True}, "motion.pw_rigid", True),
    ({"motion.pw_rigid": "auto"}, "motion.pw_rigid", "auto"),
    ({"pw_rigid": "AUTO"}, "motion.pw_rigid", "auto"),
    ({"pw_rigid": "true"}, "motion.pw_rigid", True),
    ({"pw_rigid": "False"}, "motion.pw_rigid", False),
    ({"pw_rigid": 0}, "motion.pw_rigid", False),
]


@pytest.mark.parametrize(("given", "key", "expected"), ALIASES,
                         ids=[repr(a[0]) for a in ALIASES])
def test_alias_maps_to_its_parameter(given, key, expected):
    value = get(Params.from_dict(given), key)
    assert value == expected and type(value) is type(expected)


def test_accepted_but_unused_keys_warn_and_are_listed(caplog):
    with caplog.at_level(logging.WARNING, logger="somascope.params"):
        p = Params.from_dict({"n_processes": 8, "use_cuda": True, "splits_rig": 14,
                              "shifts_opencv": True, "gSig": 4})
    assert p.init.gSig == (4.0, 4.0)
    (message,) = [r.getMessage() for r in caplog.records]
    for key in ("n_processes", "use_cuda", "splits_rig", "shifts_opencv"):
        assert key in message
    assert "gSig" not in message
    assert p == Params.from_dict({"gSig": 4})
    assert all(reason for reason in IGNORED_KEYS.values())


def test_nested_flat_and_dotted_dicts_are_equivalent():
    flat = {"fr": 20, "decay_time": 0.8, "gSig": [4, 4], "K": 6, "rf": 20, "stride": 10,
            "gnb": 2, "merge_thr": 0.85, "p": 2, "noise_method": "median", "min_SNR": 2.0,
            "rval_thr": 0.85, "max_shifts": [8, 8], "pw_rigid": True, "ITER": 3}
    caiman = {
        "data": {"fr": 20, "decay_time": 0.8},
        "init_params": {"gSig": [4, 4], "K": 6, "nb": 2},
        "patch_params": {"rf": 20, "stride": 10},
        "merging": {"merge_thr": 0.85},
        "preprocess_params": {"p": 2, "noise_method": "median"},
        "temporal_params": {"p": 2, "nb": 2, "ITER": 3},
        "spatial_params": {"nb": 2},
        "quality": {"min_SNR": 2.0, "rval_thr": 0.85},
        "online": {"min_SNR": 2.0, "rval_thr": 0.85},
        "motion": {"max_shifts": [8, 8], "pw_rigid": True},
    }
    ours = {
        "data": {"fr": 20, "decay_time": 0.8},
        "init": {"gSig": [4, 4], "K": 6, "nb": 2},
        "patch": {"rf": [20, 20], "stride": [10, 10]},
        "merge": {"merge_thr": 0.85},
        "deconvolution": {"p": 2, "noise_method": "median"},
        "temporal": {"ITER": 3},
        "quality": {"min_SNR": 2.0, "rval_thr": 0.85},
        "motion": {"max_shifts": [8, 8], "pw_rigid": True},
    }
    dotted = {f"{g}.{k}": v for g, group in ours.items() for k, v in group.items()}
    reference = Params.from_dict(flat)
    assert Params.from_dict(caiman) == reference
    assert Params.from_dict(ours) == reference
    assert Params.from_dict(dotted) == reference
    assert reference.init.K == 6 and reference.deconvolution.p == 2 and reference.temporal.ITER == 3


def test_mesmerize_items_load():
    mcorr_item = {
        "main": {"max_shifts": [20, 20], "strides": [64, 64], "overlaps": [32, 32],
                 "max_deviation_rigid": 4, "border_nan": "copy", "pw_rigid": True,
                 "gSig_filt": None},
        "optional_outputs": {"corr_image": {"window": 500}},
    }
    m = Params.from_dict(mcorr_item)
    assert (m.motion.max_shifts, m.motion.strides, m.motion.overlaps) == ((20, 20), (64, 64), (32, 32))
    assert m.motion.pw_rigid and m.motion.max_deviation_rigid == 4

    cnmf_item = {
        "main": {"p": 1, "nb": 2, "rf": 16, "stride": 7, "K": 4, "gSig": [4, 4],
                 "ssub": 1, "tsub": 1, "method_init": "greedy_roi", "merge_thr": 0.75,
                 "min_SNR": 2.2, "rval_thr": 0.85, "use_cnn": True, "min_cnn_thr": 0.9,
                 "cnn_lowest": 0.15, "decay_time": 0.6, "fr": 15},
        "refit": True,
    }
    c = Params.from_dict(cnmf_item)
    assert c.quality.refit and c.patch.rf == (16, 16) and c.patch.stride == (7, 7)
    assert c.init.K == 4 and c.init.nb == 2 and c.init.method == "rolling_greedy_roi"
    assert (c.quality.min_SNR, c.quality.cnn_lowest, c.data.decay_time) == (2.2, 0.15, 0.6)

    legacy = {"cnmf_kwargs": {k: v for k, v in cnmf_item["main"].items()
                              if k not in ("min_SNR", "rval_thr", "use_cnn", "min_cnn_thr",
                                           "cnn_lowest", "decay_time", "fr")},
              "eval_kwargs": {"min_SNR": 2.2, "rval_thr": 0.85, "use_cnn": True,
                              "min_cnn_thr": 0.9, "cnn_lowest": 0.15, "decay_time": 0.6,
                              "fr": 15},
              "refit": True, "item_name": "session 3"}
    assert Params.from_dict(legacy) == c

    # CNMF-E item, with the keys Mesmerize forces for one-photon data
    cnmfe_item = {"main": {"method_init": "corr_pnr", "n_processes": 4, "only_init": True,
                           "center_psf": True, "normalize_init": False, "gSig": (6, 6),
                           "gSiz": (25, 25), "p": 1, "min_corr": 0.85, "min_pnr": 8,
                           "rf": 60, "stride": 30, "gnb": 0, "nb_patch": 0, "K": None,
                           "ssub": 1, "tsub": 2, "ring_size_factor": 1.4,
                           "merge_thresh": 0.7, "low_rank_background": None,
                           "method_deconvolution": "oasis",
                           "update_background_components": True, "del_duplicates": True}}
    e = Params.from_dict(cnmfe_item)
    assert e.data.is_1p and e.init.method == "greedy_corr" and e.init.K is None
    assert e.data.neuron_radius == (12.0, 12.0)  # 2·gSig for one-photon
    assert e.init.gSiz == (25, 25) and e.patch.rf == (60, 60) and e.merge.merge_thr == 0.7
    assert e.motion.gSig_filt == (6.0, 6.0)


def caiman_export() -> dict:
    """What CaImAn's CNMFParams().to_dict() holds (default values, numpy where CaImAn has them)."""
    return {
        "data": {"fnames": None, "dims": None, "fr": 30, "decay_time": 0.4, "dxy": (1, 1),
                 "var_name_hdf5": "mov", "caiman_version": "1.11", "last_commit": "abc",
                 "mmap_F": None, "mmap_C": None},
        "spatial_params": {"block_size_spat": 5000, "dist": 3, "expandCore": np.ones((5, 5)),
                           "extract_cc": True, "maxthr": 0.1, "medw": None,
                           "method_exp": "dilate", "method_ls": "lasso_lars",
                           "n_pixels_per_process": None, "nb": 1, "normalize_yyt_one": True,
                           "nrgthr": 0.9999, "num_blocks_per_run_spat": 20,
                           "se": np.ones((3, 3), np.uint8), "ss": np.ones((3, 3), np.uint8),
                           "thr_method": "nrg", "update_background_components": True},
        "temporal_params": {"ITER": 2, "bas_nonneg": False, "block_size_temp": 5000,
                            "fudge_factor": 0.96, "lags": 5, "optimize_g": False,
                            "memory_efficient": False, "method_deconvolution": "oasis",
                            "nb": 1, "noise_method": "mean", "noise_range": [0.25, 0.5],
                            "num_blocks_per_run_temp": 20, "p": 2, "s_min": None,
                            "solvers": ["ECOS", "SCS"], "verbosity": False},
        "init_params": {"K": 30, "SC_kernel": "heat", "SC_sigma": 1, "SC_thr": 0,
                        "SC_normalize": True, "SC_use_NN": False, "SC_nnn": 20,
                        "alpha_snmf": 0.5, "center_psf": False, "gSig": [5, 5],
                        "gSiz": (11, 11), "init_iter": 2, "kernel": None, "lambda_gnmf": 1,
                        "maxIter": 5, "max_iter_snmf": 500, "method_init": "greedy_roi",
                        "min_corr": 0.85, "min_pnr": 20, "nIter": 5, "nb": 1,
                        "normalize_init": True, "options_local_NMF": None,
                        "perc_baseline_snmf": 20, "ring_size_factor": 1.5,
                        "rolling_length": 100, "rolling_sum": True, "seed_method": "auto",
                        "sigma_smooth_snmf": (0.5, 0.5, 0.5), "ssub": 2, "ssub_B": 2,
                        "tsub": 2},
        "preprocess_params": {"check_nan": True, "compute_g": False, "include_noise": False,
                              "lags": 5, "max_num_samples_fft": 3072,
                              "n_pixels_per_process": None, "noise_method": "mean",
                              "noise_range": [0.25, 0.5], "p": 2, "pixels": None, "sn": None},
        "patch_params": {"border_pix": 0, "del_duplicates": False, "in_memory": True,
                         "low_rank_background": True, "memory_fact": 1, "n_processes": 1,
                         "nb_patch": 1, "only_init": True, "p_patch": 0,
                         "remove_very_bad_comps": False, "rf": None, "skip_refinement": False,
                         "p_ssub": 2, "stride": None, "p_tsub": 2},
        "online": {"N_samples_exceptionality": np.int64(12), "batch_update_suff_stat": False,
                   "dist_shape_update": False, "ds_factor": 1, "epochs": 1,
                   "expected_comps": 500, "full_XXt": False, "init_batch": 200,
                   "init_method": "bare", "iters_shape": 5, "max_comp_update_shape": np.inf,
                   "max_num_added": 5, "max_shifts_online": np.array(10), "min_SNR": 2.5,
                   "min_num_trial": 5, "minibatch_shape": 100, "minibatch_suff_stat": 5,
                   "motion_correct": True, "movie_name_online": "online_movie.mp4",
                   "normalize": False, "n_refit": 0, "num_times_comp_updated": np.inf,
                   "opencv_codec": "H264", "path_to_model": "/x/cnn_model_online.h5",
                   "ring_CNN": False, "rval_thr": 0.8, "save_online_movie": False,
                   "show_movie": False, "simultaneously": False, "sniper_mode": False,
                   "stop_detection": False, "test_both": False, "thresh_CNN_noisy": 0.5,
                   "thresh_fitness_delta": -50, "thresh_fitness_raw": -52.3,
                   "thresh_overlap": 0.5, "update_freq": 200, "update_num_comps": True,
                   "use_corr_img": False, "use_dense": True, "use_peak_max": True,
                   "W_update_factor": 1},
        "quality": {"SNR_lowest": 0.5, "cnn_lowest": 0.1, "gSig_range": None, "min_SNR": 2.5,
                    "min_cnn_thr": 0.9, "rval_lowest": -1, "rval_thr": 0.8, "use_cnn": True,
                    "use_ecc": False, "max_ecc": 3},
        "merging": {"do_merge": True, "merge_thr": 0.8, "merge_parallel": False,
                    "max_merge_area": None},
        "motion": {"border_nan": "copy", "gSig_filt": None, "is3D": False,
                   "max_deviation_rigid": 3, "max_shifts": (6, 6), "min_mov": None,
                   "niter_rig": 1, "nonneg_movie": True, "num_frames_split": 80,
                   "num_splits_to_process_els": None, "num_splits_to_process_rig": None,
                   "overlaps": (32, 32), "pw_rigid": False, "shifts_opencv": True,
                   "splits_els": 14, "splits_rig": 14, "strides": (96, 96),
                   "upsample_factor_grid": 4, "use_cuda": False,
                   "indices": (slice(None), slice(None)), "shifts_interpolate": False},
        "ring_CNN": {"n_channels": 2, "use_bias": False, "loss_fn": "pct"},
    }


def test_a_full_caiman_parameter_export_loads(caplog):
    export = caiman_export()
    before = copy.deepcopy({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, np.ndarray)}
                            for k, v in export.items()})
    with caplog.at_level(logging.WARNING, logger="somascope.params"):
        p = Params.from_dict(export)
    message = " ".join(r.getMessage() for r in caplog.records)
    for key in ("n_processes", "fnames", "shifts_opencv", "SC_kernel", "ring_CNN", "use_dense"):
        assert key in message
    assert p.init.K == 30 and p.patch.rf is None and p.init.method == "rolling_greedy_roi"
    assert p.deconvolution.p == 2 and not p.deconvolution.bas_nonneg
    assert p.online.max_comp_update_shape is None and p.online.max_shifts_online == 10
    assert p.online.thresh_fitness_raw == -52.3
    assert p.motion.strides == (96, 96) and p.motion.chunk_frames == 80
    assert p.quality.N_samples_exceptionality == 12
    # the caller's dict is untouched
    after = {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, np.ndarray)}
             for k, v in export.items()}
    assert after == before


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("given", "expected"), [
    ({"merge_thres": 0.8}, "'merge_thr' (group 'merge')"),
    ({"gsig": 4}, "'gSig' (group 'init')"),
    ({"max_shift": [4, 4]}, "'max_shifts' (group 'motion')"),
    ({"motion": {"max_shfts": [4, 4]}}, "in group 'motion'"),
    ({"initt": {"K": 4}}, "'init' (a group)"),
    ({"main": {"min_snr": 2}}, "'min_SNR' (group 'quality')"),
])
def test_unknown_keys_fail_with_did_you_mean(given, expected):
    with pytest.raises(ParameterError, match="unknown parameter") as err:
        Params.from_dict(given)
    assert "Did you mean" in str(err.value)
    assert expected in str(err.value)


def test_misplaced_and_conflicting_keys_fail():
    with pytest.raises(ParameterError, match="belongs to group 'init'"):
        Params.from_dict({"motion": {"gSig": 4}})
    with pytest.raises(ParameterError, match="conflicting values for init.K"):
        Params.from_dict({"k": 5, "K": 6})
    with pytest.raises(ParameterError, match="conflicting values for init.nb"):
        Params.from_dict({"init": {"nb": 1}, "temporal": {"nb": 2}})
    with pytest.raises(ParameterError, match="contradicts"):
        Params.from_dict({"method": "greedy_roi", "rolling_sum": True})
    with pytest.raises(ParameterError, match="must be a mapping"):
        Params.from_dict({"motion": 3})
    with pytest.raises(ParameterError, match="mapping"):
        Params.from_dict([("fr", 30)])  # type: ignore[arg-type]


IMPOSSIBLE = [
    ({"gSig": 6, "gSiz": 5}, "init.gSiz"),
    ({"gSig": 5, "rf": 6}, "patch.rf"),
    ({"rf": 20, "stride": 40}, "patch.stride"),
    ({"fr": 0}, "data.fr"),
    ({"fr": -30}, "data.fr"),
    ({"decay_time": 0}, "data.decay_time"),
    ({"dxy": [1, -1]}, "data.dxy"),
    ({"max_shifts": [-1, 4]}, "motion.max_shifts"),
    ({"strides": [48, 48], "overlaps": [48, 24]}, "motion.overlaps"),
    ({"border_mode": "reflect"}, "motion.border_mode"),
    ({"border_nan": "min"}, "border_nan"),
    ({"merge_thr": 1.2}, "merge.merge_thr"),
    ({"min_cnn_thr": 1.5}, "quality.min_cnn_thr"),
    ({"rval_thr": 2}, "quality.rval_thr"),
    ({"min_SNR": 1.0, "SNR_lowest": 2.0}, "quality.SNR_lowest"),
    ({"method": "kmeans"}, "init.method"),
    ({"method_init": "graph_nmf"}, "method_init"),
    ({"method_deconvolution": "cvxpy"}, "deconvolution.method_deconvolution"),
    ({"p": 3}, "deconvolution.p"),
    ({"noise_range": [0.5, 0.25]}, "deconvolution.noise_range"),
    ({"noise_method": "max"}, "deconvolution.noise_method"),
    ({"lags": -1}, "deconvolution.lags"),
    ({"K": None}, "init.K"),
    ({"K": 0}, "init.K"),
    ({"min_corr": 1.5}, "init.min_corr"),
    ({"thresh_CNN_noisy": -0.1}, "online.thresh_CNN_noisy"),
    ({"init_method": "random"}, "online.init_method"),
    ({"neuron_radius_um": 6}, "neuron_radius_um"),
    ({"neuron_radius": 5, "neuron_radius_um": 6, "dxy": 1}, "neuron radius"),
    ({"gSig": [4, 4], "max_shifts": [3, 3, 3]}, "per-axis"),
    ({"is3D": True, "gSig": [4, 4]}, "is3D=True contradicts gSig"),
    ({"gSig": "big"}, "init.gSig"),
    ({"pw_rigid": "yes"}, "motion.pw_rigid"),
    ({"K": 4.5}, "init.K"),
    ({"fr": float("nan")}, "data.fr"),
    ({"s_min": "big"}, "deconvolution.s_min"),
    ({"s_min": [1, 2]}, "deconvolution.s_min"),
]


@pytest.mark.parametrize(("given", "key"), IMPOSSIBLE, ids=[repr(a[0]) for a in IMPOSSIBLE])
def test_impossible_values_fail_naming_key_and_fix(given, key):
    with pytest.raises(ParameterError) as err:
        Params.from_dict(given)
    assert key in str(err.value)
    assert "Fix" in str(err.value)


def test_direct_construction_and_in_place_changes_are_validated():
    with pytest.raises(ParameterError, match="motion.overlaps"):
        MotionParams(strides=(32, 32), overlaps=(32, 16))
    with pytest.raises(ParameterError, match="motion.is3D"):
        Params(motion=MotionParams(is3D=True))
    assert MotionParams(max_shifts=[8, 8]).max_shifts == (8, 8)  # lists become tuples
    p = Params()
    p.patch.rf = (8, 8)
    with pytest.raises(ParameterError, match="patch.rf"):
        p.validate()


def test_even_gsiz_is_made_odd_like_caiman(caplog):
    with caplog.at_level(logging.WARNING, logger="somascope.params"):
        p = Params.from_dict({"gSig": 5, "gSiz": 10})
    assert p.init.gSiz == (11, 11)
    assert "gSiz" in caplog.text


# ----------------------------------------------------------------------------- round trips


def nondefault() -> Params:
    return Params.from_dict({"is3D": True, "neuron_radius_um": [4, 6, 6], "dxy": [2, 1, 1],
                             "fr": 7.5, "is_1p": True, "pw_rigid": True, "K": None,
                             "s_min": 0.1, "gSig_range": [3, 4, 5], "refit": True,
                             "rf": None, "max_merge_area": 400})


@pytest.mark.parametrize("params", [Params(), nondefault()], ids=["default", "3d-1p"])
def test_json_and_yaml_round_trips_are_exact(params, tmp_path):
    assert json.loads(json.dumps(params.to_dict())) == params.to_dict()
    assert Params.from_json(params.to_json()) == params
    assert Params.from_yaml(params.to_yaml()) == params
    for name in ("p.json", "p.yaml", "p.yml"):
        params.save(tmp_path / name)
        assert Params.load(tmp_path / name) == params
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p.json", "p.yaml", "p.yml"]


def test_load_reports_the_file_and_bad_formats(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("init:\n  gSigg: 4\n")
    with pytest.raises(ParameterError, match="bad.yaml.*gSigg"):
        Params.load(bad)
    with pytest.raises(ParameterError, match=".json, .yaml or .yml"):
        Params.load(tmp_path / "params.toml")
    with pytest.raises(ParameterError, match="invalid JSON"):
        Params.from_json("{fr: 30")


# ----------------------------------------------------------------------------- diff and replace


def test_diff_lists_exactly_the_changed_keys():
    a = Params()
    b = Params.from_dict({"merge_thr": 0.9, "motion": {"pw_rigid": True}, "p": 2})
    assert a.diff(b) == [("motion.pw_rigid", "auto", True),
                         ("merge.merge_thr", 0.8, 0.9),
                         ("deconvolution.p", 1, 2)]
    assert b.diff(a) == [(k, y, x) for k, x, y in a.diff(b)]
    assert a.diff(Params()) == []


def test_replace_returns_a_new_validated_object_and_rederives():
    base = Params.from_neuron(radius_px=5, fr=30, decay_time=0.4, min_SNR=3.0, rf=30)
    slower = base.replace(fr=15)
    assert base.data.fr == 30.0  # unchanged
    assert slower.quality.N_samples_exceptionality == 6  # followed the rule
    assert slower.quality.min_SNR == 3.0 and slower.patch.rf == (30, 30)  # kept
    bigger = base.replace({"data.neuron_radius": 8})
    assert bigger.init.gSig == (8.0, 8.0) and bigger.motion.max_shifts == (10, 10)
    assert bigger.patch.rf == (30, 30)  # was set, so kept
    assert base.replace(gSig=3).data.neuron_radius == (3.0, 3.0)
    assert base.replace(**{"motion.strides": [64, 64]}).motion.overlaps == (32, 32)
    with pytest.raises(ParameterError, match="patch.stride"):
        base.replace(stride=60)
    with pytest.raises(ParameterError, match="Did you mean"):
        base.replace(merge_tresh=0.5)
    rolling = Params.from_dict({"method_init": "greedy_roi"})
    assert rolling.replace(rolling_sum=False).init.method == "greedy_roi"


def test_replace_keeps_in_place_changes():
    p = Params()
    p.quality.min_SNR = 4.0
    p.motion.max_shifts = (9, 9)
    q = p.replace(neuron_radius=10)
    assert q.quality.min_SNR == 4.0 and q.motion.max_shifts == (9, 9)
    assert q.init.gSig == (10.0, 10.0)


def test_from_neuron_needs_one_radius_and_rejects_repeated_settings():
    with pytest.raises(ParameterError, match="exactly one of radius_px and radius_um"):
        Params.from_neuron()
    with pytest.raises(ParameterError, match="exactly one"):
        Params.from_neuron(radius_px=4, radius_um=6, dxy=1)
    with pytest.raises(ParameterError, match="conflicting values for data.fr"):
        Params.from_neuron(radius_px=4, fr=30, **{"data.fr": 15})
    assert Params.from_neuron(radius_px=4, K=7).init.K == 7


@pytest.mark.parametrize("value", ["auto", True, False])
def test_pw_rigid_round_trips_through_yaml_json_and_set(value, tmp_path):
    from somascope.cli import _parse_set

    p = Params.from_dict({"pw_rigid": value})
    assert p.motion.pw_rigid == value and type(p.motion.pw_rigid) is type(value)
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"p{suffix}"
        p.save(path)
        back = Params.load(path)
        assert back.motion.pw_rigid == value and type(back.motion.pw_rigid) is type(value)
    text = {"auto": "auto", True: "true", False: "false"}[value]
    over = _parse_set([f"motion.pw_rigid={text}"])
    assert Params().replace(over).motion.pw_rigid == value
