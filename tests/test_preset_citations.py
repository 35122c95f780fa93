"""Every preset holds the values of the file it cites: the cited values are data here, read off the files.

For each method x family: the repository, commit and path the preset cites, and the values read from that file, as
written there (yacs keys for the configs of mariodoebler/test-time-adaptation, DequanWang/tent, qinenergy/cotta and
BIT-DA/RoTTA, completed by that repository's `conf.py` defaults for the keys the yaml does not set; the arguments or
constants of the code for the authors' scripts, quoted). One table per method translates the cited keys into our
options; the test resolves each preset as a run does (class defaults < preset, `--preset <family>`) and compares
every option: each resolved option is either cited (and equal) or listed in NOT_CITED with the reason it has no
counterpart in the cited code. A deviation forced by a stated reason is marked in DEVIATIONS (and documented in the
method's docstring). Adam-type optimizers ignore momentum/Nesterov and SGD ignores betas, so those are compared only
where the optimizer reads them.

Files read (git show <commit>:<path>): mariodoebler/test-time-adaptation 8b2ed63 classification/conf.py,
classification/cfgs/{cifar10_c,cifar100_c,imagenet_c}/*.yaml, segmentation/conf.py, segmentation/cfgs/*.yaml,
classification/methods/{sar,adacontrast,rmt,santa,memo}.py, classification/datasets/data_loading.py; DequanWang/tent
e9e926a conf.py, cfgs/{tent,norm}.yaml; qinenergy/cotta c212a20 cifar/conf.py, cifar/cfgs/cifar{10,100}/*.yaml,
cifar/cotta.py, imagenet/conf.py, imagenet/cfgs/10orders/cotta/cotta0.yaml, imagenet/cotta.py; BIT-DA/RoTTA 67e34c9
configs/adapter/rotta.yaml, core/configs/defaults.py; mr-eggplant/EATA f739b36 main.py; mr-eggplant/SAR 20f6e24
main.py, sam.py, sar.py; Jhyun17/DeYO 3d7d289 exp_deyo.sh, config.py, main.py; oripress/CCC 656dec3 models/rdumb.py;
zhangmarvin/memo 228b290 imagenet-exps/script_test_in.py, imagenet-exps/test_calls/test_adapt.py; kdiAAA/TDA e697fb0
configs/imagenet.yaml, utils.py, datasets/imagenet.py; TaesikGong/NOTE a714a2a tta.sh, main.py, learner/dnn.py;
devavratTomar/unmixtns 8e12b9f tta_experiments/run.sh, conf.py, unmixtns.py, test_time.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tta_bench import methods
from tta_bench.config import RunConfig
from tta_bench.identity import resolve

SUITE, SUITE_AT = "mariodoebler/test-time-adaptation", "8b2ed63"

# --- conf.py defaults (the keys a yaml file does not set) ------------------------------------------------------------
# mariodoebler/test-time-adaptation@8b2ed63 classification/conf.py
SUITE_CONF = {
    "OPTIM.METHOD": "Adam", "OPTIM.LR": 1e-3, "OPTIM.BETA": 0.9, "OPTIM.MOMENTUM": 0.9, "OPTIM.DAMPENING": 0.0,
    "OPTIM.NESTEROV": True, "OPTIM.WD": 0.0, "OPTIM.STEPS": 1, "BN.ALPHA": 0.1, "M_TEACHER.MOMENTUM": 0.999,
    "CONTRAST.TEMPERATURE": 0.1, "CONTRAST.PROJECTION_DIM": 128, "CONTRAST.MODE": "all", "COTTA.RST": 0.01,
    "COTTA.AP": 0.92, "RMT.LAMBDA_CE_SRC": 1.0, "RMT.LAMBDA_CE_TRG": 1.0, "RMT.LAMBDA_CONT": 1.0,
    "RMT.NUM_SAMPLES_WARM_UP": 50000, "SANTA.LAMBDA_CE_TRG": 1.0, "SANTA.LAMBDA_CONT": 1.0,
    "ADACONTRAST.QUEUE_SIZE": 16384, "ADACONTRAST.CONTRAST_TYPE": "class_aware", "ADACONTRAST.CE_TYPE": "standard",
    "ADACONTRAST.ALPHA": 1.0, "ADACONTRAST.BETA": 1.0, "ADACONTRAST.ETA": 1.0, "ADACONTRAST.DIST_TYPE": "cosine",
    "ADACONTRAST.CE_SUP_TYPE": "weak_strong", "ADACONTRAST.NUM_NEIGHBORS": 10, "LAME.AFFINITY": "rbf", "LAME.KNN": 5,
    "LAME.SIGMA": 1.0, "LAME.FORCE_SYMMETRY": False, "EATA.FISHER_ALPHA": 2000.0, "EATA.D_MARGIN": 0.05,
    "EATA.MARGIN_E0": 0.4, "SAR.RESET_CONSTANT_EM": 0.2, "DEYO.REWEIGHT_ENT": True, "DEYO.REWEIGHT_PLPD": True,
    "DEYO.PLPD": 0.2, "DEYO.MARGIN": 0.5, "DEYO.AUG_TYPE": "patch", "DEYO.OCCLUSION_SIZE": 112, "DEYO.ROW_START": 56,
    "DEYO.COLUMN_START": 56, "DEYO.PATCH_LEN": 4, "ROTTA.MEMORY_SIZE": 64, "ROTTA.UPDATE_FREQUENCY": 64,
    "ROTTA.NU": 0.001, "ROTTA.ALPHA": 0.05, "ROTTA.LAMBDA_T": 1.0, "ROTTA.LAMBDA_U": 1.0, "RPL.Q": 0.8,
    "ROID.USE_WEIGHTING": True, "ROID.USE_PRIOR_CORRECTION": True, "ROID.USE_CONSISTENCY": True,
    "ROID.MOMENTUM_SRC": 0.99, "ROID.MOMENTUM_PROBS": 0.9, "ROID.TEMPERATURE": 1 / 3, "CMF.ALPHA": 0.99,
    "CMF.GAMMA": 0.99, "CMF.Q": 0.005, "CMF.TYPE": "lp", "CLIP.PROMPT_MODE": "custom", "TPT.SELECTION_P": 0.1,
    "TPT.N_CTX": 4, "TPT.CTX_INIT": "a_photo_of_a", "SOURCE.NUM_SAMPLES": -1, "TEST.BATCH_SIZE": 128,
    "TEST.N_AUGMENTATIONS": 32, "MODEL.RESET_AFTER_NUM_UPDATES": 0, "MODEL.EPISODIC": False,
}  # fmt: skip
# mariodoebler/test-time-adaptation@8b2ed63 segmentation/conf.py
SEG_CONF = {
    "OPTIM.METHOD": "SGD", "OPTIM.LR": 2.5e-4, "OPTIM.SCALE_LR_SEGHEAD": 10, "OPTIM.STEPS": 1, "OPTIM.WD": 0.0005,
    "OPTIM.MOMENTUM": 0.9, "OPTIM.NESTEROV": False, "BN.ALPHA": 0.1, "M_TEACHER.MOMENTUM": 0.999, "COTTA.RST": 0.01,
    "COTTA.AP": 0.9, "TEST.BATCH_SIZE": 1, "TEST.N_AUGMENTATIONS": 6, "MODEL.EPISODIC": False,
}  # fmt: skip
# DequanWang/tent@e9e926a conf.py and qinenergy/cotta@c212a20 {cifar,imagenet}/conf.py (cifar: + OPTIM.MT/RST/AP)
TENT_CONF = {"OPTIM.STEPS": 1, "OPTIM.LR": 1e-3, "OPTIM.METHOD": "Adam", "OPTIM.BETA": 0.9, "OPTIM.MOMENTUM": 0.9,
             "OPTIM.DAMPENING": 0.0, "OPTIM.NESTEROV": True, "OPTIM.WD": 0.0, "TEST.BATCH_SIZE": 128}  # fmt: skip
COTTA_CIFAR_CONF = {**TENT_CONF, "OPTIM.MT": 0.999, "OPTIM.RST": 0.01, "OPTIM.AP": 0.92}
# BIT-DA/RoTTA@67e34c9 core/configs/defaults.py
ROTTA_CONF = {**TENT_CONF, "TEST.BATCH_SIZE": 64, "ADAPTER.RoTTA.MEMORY_SIZE": 64, "ADAPTER.RoTTA.UPDATE_FREQUENCY": 64,
              "ADAPTER.RoTTA.NU": 0.001, "ADAPTER.RoTTA.ALPHA": 0.05, "ADAPTER.RoTTA.LAMBDA_T": 1.0,
              "ADAPTER.RoTTA.LAMBDA_U": 1.0}  # fmt: skip

# --- the yaml files, as written (CORRUPTION and MODEL.ARCH/ADAPTATION left out) -----------------------------------
_ADAM = {"OPTIM.METHOD": "Adam", "OPTIM.STEPS": 1, "OPTIM.BETA": 0.9, "OPTIM.LR": 1e-3, "OPTIM.WD": 0.0}
_IN_SGD = {"OPTIM.BETA": 0.9, "OPTIM.LR": 0.00025, "OPTIM.METHOD": "SGD", "OPTIM.STEPS": 1, "OPTIM.WD": 0.0}
_ADACONTRAST = {"OPTIM.METHOD": "SGD", "OPTIM.LR": 0.0002, "OPTIM.MOMENTUM": 0.9, "OPTIM.WD": 0.0001,
                "OPTIM.STEPS": 1, "OPTIM.NESTEROV": True, "CONTRAST.TEMPERATURE": 0.07}  # fmt: skip
_MEMO = {"MODEL.EPISODIC": True, "TEST.WINDOW_LENGTH": 1, "OPTIM.METHOD": "SGD", "OPTIM.STEPS": 1, "OPTIM.BETA": 0.9,
         "OPTIM.WD": 0.0}  # fmt: skip
SUITE_YAML: dict[tuple[str, str], dict[str, Any]] = {
    # classification/cfgs/cifar10_c/<file> and cifar100_c/<file> (TEST.BATCH_SIZE 200 unless stated)
    **{(f, fam): {"TEST.BATCH_SIZE": 200, **v} for fam in ("cifar10_c", "cifar100_c") for f, v in {
        "adacontrast.yaml": _ADACONTRAST, "cmf.yaml": _ADAM, "deyo.yaml": _ADAM, "lame.yaml": {},
        "norm_test.yaml": {}, "rmt.yaml": _ADAM, "roid.yaml": _ADAM, "rotta.yaml": _ADAM, "rpl.yaml": _ADAM,
        "santa.yaml": _ADAM, "sar.yaml": _ADAM,
    }.items()},
    ("eata.yaml", "cifar10_c"): {"TEST.BATCH_SIZE": 200, **_ADAM, "EATA.FISHER_ALPHA": 1.0, "EATA.D_MARGIN": 0.4,
                                 "SOURCE.NUM_SAMPLES": 2000},
    ("eata.yaml", "cifar100_c"): {"TEST.BATCH_SIZE": 200, **_ADAM, "EATA.FISHER_ALPHA": 1.0, "EATA.D_MARGIN": 0.1,
                                  "SOURCE.NUM_SAMPLES": 2000},
    ("eta.yaml", "cifar10_c"): {"TEST.BATCH_SIZE": 200, **_ADAM, "EATA.FISHER_ALPHA": 0.0, "EATA.D_MARGIN": 0.4},
    ("eta.yaml", "cifar100_c"): {"TEST.BATCH_SIZE": 200, **_ADAM, "EATA.FISHER_ALPHA": 0.0, "EATA.D_MARGIN": 0.1},
    **{("rdumb.yaml", fam): {"MODEL.RESET_AFTER_NUM_UPDATES": 1000, "TEST.BATCH_SIZE": 200, **_ADAM,
                             "EATA.FISHER_ALPHA": 0.0, "EATA.D_MARGIN": 0.4} for fam in ("cifar10_c", "cifar100_c")},
    **{("memo.yaml", fam): {**_MEMO, "TEST.BATCH_SIZE": 1, "TEST.N_AUGMENTATIONS": 32, "OPTIM.LR": 0.005}
       for fam in ("cifar10_c", "cifar100_c")},
    **{("norm_alpha.yaml", fam): {"BN.ALPHA": 0.1, "TEST.BATCH_SIZE": 1}
       for fam in ("cifar10_c", "cifar100_c", "imagenet_c")},
    **{("norm_ema.yaml", fam): {"TEST.BATCH_SIZE": bs} for fam, bs in (("cifar10_c", 200), ("cifar100_c", 200),
                                                                       ("imagenet_c", 64))},
    # classification/cfgs/imagenet_c/<file>
    ("adacontrast.yaml", "imagenet_c"): {**_ADACONTRAST, "TEST.BATCH_SIZE": 64},
    ("cmf.yaml", "imagenet_c"): {**_IN_SGD, "TEST.BATCH_SIZE": 64},
    ("lame.yaml", "imagenet_c"): {"TEST.BATCH_SIZE": 64},
    ("norm_test.yaml", "imagenet_c"): {"TEST.BATCH_SIZE": 64},
    ("rmt.yaml", "imagenet_c"): {**_IN_SGD, "OPTIM.LR": 0.01, "TEST.BATCH_SIZE": 64},
    ("roid.yaml", "imagenet_c"): {**_IN_SGD, "TEST.BATCH_SIZE": 64},
    ("rotta.yaml", "imagenet_c"): {**_IN_SGD, "OPTIM.LR": 0.001, "OPTIM.METHOD": "Adam", "TEST.BATCH_SIZE": 64},
    ("rpl.yaml", "imagenet_c"): {**_IN_SGD, "OPTIM.LR": 0.0005, "TEST.BATCH_SIZE": 64},
    ("santa.yaml", "imagenet_c"): {**_IN_SGD, "OPTIM.LR": 0.01, "TEST.BATCH_SIZE": 64},
    ("tent.yaml", "imagenet_c"): {**_IN_SGD, "TEST.BATCH_SIZE": 64},
    ("tpt.yaml", "imagenet_c"): {"MODEL.EPISODIC": True, "OPTIM.LR": 0.005, "OPTIM.METHOD": "AdamW", "OPTIM.STEPS": 1,
                                 "OPTIM.BETA": 0.9, "OPTIM.WD": 0.01, "TEST.BATCH_SIZE": 1,
                                 "TEST.N_AUGMENTATIONS": 64, "CLIP.PRECISION": "fp32"},
    ("vte.yaml", "imagenet_c"): {"TEST.BATCH_SIZE": 1, "TEST.N_AUGMENTATIONS": 64, "CLIP.PROMPT_MODE": "ensemble"},
    # conf.py alone (tta_aug cites the defaults it reads)
    **{("conf.py", fam): {} for fam in ("cifar10_c", "cifar100_c", "imagenet_c")},
}  # fmt: skip
SEG_YAML = {  # segmentation/cfgs/<file>
    "tent.yaml": {"MODEL.EPISODIC": True, "TEST.BATCH_SIZE": 1, "OPTIM.METHOD": "SGD", "OPTIM.LR": 0.00025,
                  "OPTIM.WD": 0.0005, "OPTIM.STEPS": 1},
    "cotta.yaml": {"TEST.BATCH_SIZE": 1, "OPTIM.METHOD": "SGD", "OPTIM.LR": 0.00025, "OPTIM.WD": 0.0005,
                   "OPTIM.STEPS": 1, "COTTA.RST": 0.01, "COTTA.AP": 0.9, "M_TEACHER.MOMENTUM": 0.999},
    "norm_test.yaml": {"TEST.BATCH_SIZE": 1},
    "norm_ema.yaml": {"TEST.BATCH_SIZE": 1},
    "norm_alpha.yaml": {"BN.ALPHA": 0.1, "TEST.BATCH_SIZE": 1},
}  # fmt: skip


# --- cited key -> our option, per method ------------------------------------------------------------------------
def _optim(c: dict) -> dict:
    """OPTIM.* of a yacs config as our optimizer options (setup_optimizer: betas=(OPTIM.BETA, 0.999))."""
    betas = {"betas": (c["OPTIM.BETA"], 0.999)} if "OPTIM.BETA" in c else {}  # segmentation: SGD only, no BETA
    return {"optimizer": c["OPTIM.METHOD"].lower(), "lr": float(c["OPTIM.LR"]), **betas,
            "momentum": c["OPTIM.MOMENTUM"], "nesterov": c["OPTIM.NESTEROV"], "wd": c["OPTIM.WD"],
            "steps": c["OPTIM.STEPS"]}  # fmt: skip


def _eata(c: dict) -> dict:
    return {"e_margin_frac": c["EATA.MARGIN_E0"], "d_margin": c["EATA.D_MARGIN"]}


def _roid(c: dict) -> dict:
    return {"use_weighting": c["ROID.USE_WEIGHTING"], "use_prior_correction": c["ROID.USE_PRIOR_CORRECTION"],
            "use_consistency": c["ROID.USE_CONSISTENCY"], "momentum_probs": c["ROID.MOMENTUM_PROBS"],
            "temperature": c["ROID.TEMPERATURE"]}  # fmt: skip


def _sar(c: dict) -> dict:
    # classification/methods/sar.py setup_optimizer: SAM(params, torch.optim.SGD, lr=OPTIM.LR,
    # momentum=OPTIM.MOMENTUM) whatever OPTIM.METHOD says (the cifar yaml's "Adam" is not read); SAM's rho=0.05
    return {"optimizer": "sgd", "lr": float(c["OPTIM.LR"]), "momentum": c["OPTIM.MOMENTUM"], "nesterov": False,
            "wd": 0.0, "rho": 0.05, "steps": c["OPTIM.STEPS"], "margin_e0_frac": c["EATA.MARGIN_E0"],
            "reset_constant": c["SAR.RESET_CONSTANT_EM"]}  # fmt: skip


TRANSLATE = {
    "tent": _optim,
    "norm": lambda c: {},
    "alpha_bn": lambda c: {"source_weight": 1 - c["BN.ALPHA"]},  # AlphaBatchNorm: (1-α) source + α test
    "adacontrast": lambda c: {
        **_optim(c), "temperature": c["CONTRAST.TEMPERATURE"], "queue_size": c["ADACONTRAST.QUEUE_SIZE"],
        "m": c["M_TEACHER.MOMENTUM"], "num_neighbors": c["ADACONTRAST.NUM_NEIGHBORS"], "alpha": c["ADACONTRAST.ALPHA"],
        "beta": c["ADACONTRAST.BETA"], "eta": c["ADACONTRAST.ETA"],
        "warmup_samples": 1024,  # methods/adacontrast.py: `if self.first_X_samples >= 1024` (a constant)
    },
    "cmf": lambda c: {**_optim(c), **_roid(c), "alpha": c["CMF.ALPHA"], "gamma": c["CMF.GAMMA"], "q": c["CMF.Q"]},
    "cotta": lambda c: {**_optim(c), "mt": c["M_TEACHER.MOMENTUM"], "rst": c["COTTA.RST"], "ap": c["COTTA.AP"]},
    "deyo": lambda c: {
        **_optim(c), "margin": c["DEYO.MARGIN"], "margin_e0": c["EATA.MARGIN_E0"], "plpd_threshold": c["DEYO.PLPD"],
        "reweight_ent": c["DEYO.REWEIGHT_ENT"], "reweight_plpd": c["DEYO.REWEIGHT_PLPD"],
        "aug_type": c["DEYO.AUG_TYPE"], "patch_len": c["DEYO.PATCH_LEN"], "occlusion_size": c["DEYO.OCCLUSION_SIZE"],
        "row_start": c["DEYO.ROW_START"], "column_start": c["DEYO.COLUMN_START"],
    },
    "eata": lambda c: {**_optim(c), **_eata(c), "fisher_alpha": c["EATA.FISHER_ALPHA"],
                       "fisher_size": c["SOURCE.NUM_SAMPLES"]},
    "eta": lambda c: {**_optim(c), **_eata(c)},
    "rdumb": lambda c: {**_optim(c), **_eata(c), "reset_every": c["MODEL.RESET_AFTER_NUM_UPDATES"]},
    "lame": lambda c: {"affinity": c["LAME.AFFINITY"], "knn": c["LAME.KNN"], "sigma": c["LAME.SIGMA"],
                       "force_symmetry": c["LAME.FORCE_SYMMETRY"],
                       # methods/lame.py: def laplacian_optimization(unary, kernel, bound_lambda=1, max_steps=100)
                       "bound_lambda": 1.0, "max_steps": 100},
    "memo": lambda c: {
        **_optim(c), "n_aug": c["TEST.N_AUGMENTATIONS"],
        "prior_strength": round((1 - c["BN.ALPHA"]) / c["BN.ALPHA"]),  # AlphaBatchNorm α 0.1 = prior N/(N+1), N 9
    },
    "rmt": lambda c: {
        **_optim(c), "mt": c["M_TEACHER.MOMENTUM"], "lambda_ce_src": c["RMT.LAMBDA_CE_SRC"],
        "lambda_ce_trg": c["RMT.LAMBDA_CE_TRG"], "lambda_cont": c["RMT.LAMBDA_CONT"],
        "temperature": c["CONTRAST.TEMPERATURE"], "projection_dim": c["CONTRAST.PROJECTION_DIM"],
        "num_samples_warm_up": c["RMT.NUM_SAMPLES_WARM_UP"],
        "max_proto_samples": 100000,  # methods/rmt.py: `if len(features_src) > 100000: break` (a constant)
    },
    "santa": lambda c: {
        **_optim(c), "lambda_ce_trg": c["SANTA.LAMBDA_CE_TRG"], "lambda_cont": c["SANTA.LAMBDA_CONT"],
        "temperature": c["CONTRAST.TEMPERATURE"], "projection_dim": c["CONTRAST.PROJECTION_DIM"],
        "max_proto_samples": 100000,  # methods/santa.py: `if len(features_src) > 100000: break`
    },
    "roid": lambda c: {**_optim(c), **_roid(c), "momentum_src": c["ROID.MOMENTUM_SRC"]},
    "rotta": lambda c: {  # no `steps`: RoTTA updates once every `update_frequency` samples
        **{k: v for k, v in _optim(c).items() if k != "steps"},
        **{o: c[f"ROTTA.{o.upper()}"] for o in ("memory_size", "update_frequency", "nu", "alpha", "lambda_t",
                                                 "lambda_u")},
    },
    "rpl": lambda c: {**_optim(c), "q": c["RPL.Q"]},
    "sar": _sar,
    "tpt": lambda c: {
        **_optim(c), "selection_p": c["TPT.SELECTION_P"], "ctx_init": c["TPT.CTX_INIT"].replace("_", " "),
        # datasets/data_loading.py: AugMixAugmenter(n_views=n_views-1, use_augmix=dataset in generalization sets)
        "n_aug": c["TEST.N_AUGMENTATIONS"] - 1, "augmix": False,
    },
    "vte": lambda c: {
        "selection_p": c["TPT.SELECTION_P"], "n_aug": c["TEST.N_AUGMENTATIONS"] - 1, "augmix": False,
        "templates": {"ensemble": "clip80"}[c["CLIP.PROMPT_MODE"]],  # the OpenAI ImageNet template ensemble
    },
    "tta_aug": lambda c: {"n_aug": c["TEST.N_AUGMENTATIONS"], "bn_prior": 1 - c["BN.ALPHA"]},
    "bn_ema": lambda c: {"momentum": None},  # methods/bn.py EMABatchNorm keeps each layer's own BN momentum
}  # fmt: skip
TRANSLATE_ROTTA_AUTHORS = lambda c: {  # noqa: E731 - BIT-DA/RoTTA: ADAPTER.RoTTA.* keys, build_optimizer = suite's
    **{k: v for k, v in _optim(c).items() if k != "steps"},
    **{o: c[f"ADAPTER.RoTTA.{o.upper()}"] for o in ("memory_size", "update_frequency", "nu", "alpha", "lambda_t",
                                                      "lambda_u")},
}  # fmt: skip
TRANSLATE_COTTA_AUTHORS = lambda c: {  # noqa: E731 - qinenergy/cotta cifar: OPTIM.MT/RST/AP; cifar/cotta.py constants
    **_optim(c), "mt": c["OPTIM.MT"], "rst": c["OPTIM.RST"], "ap": c["OPTIM.AP"],
    "n_aug": 32, "loss": "ce", "always_augment": True,  # `N = 32`, softmax_entropy(x, x_ema) = -(p_ema·log p).sum
}  # fmt: skip


def suite(method: str, family_dir: str, file: str, **extra: Any) -> dict:
    c = {**SUITE_CONF, **SUITE_YAML[(file, family_dir)]}
    return {"repo": SUITE, "commit": SUITE_AT, "path": f"classification/cfgs/{family_dir}/{file}"
            if file != "conf.py" else "classification/conf.py", "cfg": c,
            "values": {**TRANSLATE[method](c), **extra}}  # fmt: skip


def seg(method: str, file: str) -> dict:
    c = {**SEG_CONF, **SEG_YAML[file]}
    return {"repo": SUITE, "commit": SUITE_AT, "path": f"segmentation/cfgs/{file}", "cfg": c,
            "values": TRANSLATE[method](c)}  # fmt: skip


def authors(repo: str, commit: str, path: str, values: dict, quote: str) -> dict:
    return {"repo": repo, "commit": commit, "path": path, "values": values, "quote": quote}


_C10, _C100, _IN = "cifar10_c", "cifar100_c", "imagenet_c"
# >>> TTA-VLM episodic (c_tpt ...)
# TomSheng21/tta-vlm@bcc735f (TTA-VLM) episodic methods, ImageNet ('I'): instance_tta.py `-b 64 --ctx_init
# a_photo_of_a` (README), `--lr 5e-3 --selection_p 0.1 --tta_steps 1`, AugMixAugmenter(n_views=batch_size-1,
# augmix=len(dset)>1), batchsize = 1; torch.optim.AdamW(params, args.lr) (torch defaults betas (0.9, 0.999), wd 0.01)
_TTAVLM_TPT = dict(optimizer="adamw", lr=5e-3, betas=(0.9, 0.999), wd=0.01, n_aug=63, selection_p=0.1, steps=1,
                   ctx_init="a photo of a", augmix=False)  # fmt: skip
TTAVLM_CITED: dict[tuple[str, str], dict] = {
    ("c_tpt", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_tta.py", {**_TTAVLM_TPT, "lambda_atfd": 20.0},
        "instance_method/ctpt.py: `lambda_ = 50 if len(args.test_sets) > 1 else 20`; loss += -lambda_ * "
        "l2_norm_mean_training; AdamW(trainable_param, args.lr)",
    ) | {"batch_size": 1},
    ("mta", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_method/mta.py",
        dict(n_aug=63, augmix=False, lambda_y=0.2, lambda_q=4.0, max_iter=5, ctx_init="a photo of a"),
        "self.mta_lambda_q = 4; self.mta_lambda_y = 0.2; solve_mta: max_iter = 5; instance_tta.py: -b 64, "
        "AugMixAugmenter(n_views=args.batch_size-1, augmix=len(dset)>1), get_coop(..., args.ctx_init)",
    ) | {"batch_size": 1},
    ("zero", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_method/zero.py",
        dict(n_aug=63, augmix=False, gamma=0.3, ctx_init="a photo of a"),
        "self.gamma = 0.3; zero_temp = torch.finfo(l_filt.dtype).eps; instance_tta.py: -b 64, "
        "AugMixAugmenter(n_views=args.batch_size-1, augmix=len(dset)>1), get_coop(..., args.ctx_init)",
    ) | {"batch_size": 1},
    ("tps", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_method/tps.py",
        {k: v for k, v in _TTAVLM_TPT.items()},
        "`if args.test_sets in ['A', 'R', 'V', 'K', 'I']: args.lr = 5e-3 else: args.lr = 1e-3`; "
        "torch.optim.AdamW(self.model.shifter.parameters(), args.lr); custom_clip.py Shifter: zeros (C, output_dim)",
    ) | {"batch_size": 1},
    ("r_tpt", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_method/rtpt.py", {**_TTAVLM_TPT, "top_k": 20, "temperature": 0.01},
        "get_top_sim: `k = 20`; `weight = torch.nn.functional.softmax(score/0.01, dim=-1)`; "
        "AdamW(trainable_param, args.lr); loss = entropy_avg(output)",
    ) | {"batch_size": 1},
    ("ttl", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_method/ttl.py",
        {**{k: v for k, v in _TTAVLM_TPT.items() if k != "selection_p"}, "lora_blocks": 3, "rank": 16,
         "lora_alpha": 32.0, "entropy_margin": 0.4},
        "coeff = 1 / (torch.exp(((entropys.clone().detach()) - 0.4))); AdamW(self.model.get_lora_params(), args.lr); "
        "custom_clip.py add_lora(layer_indices=[9,10,11], r=16, lora_alpha=32, lora_dropout=0.05) (ViT-B/16)",
    ) | {"batch_size": 1},
    ("rlcf", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "instance_method/rlcf.py",
        {**_TTAVLM_TPT, "lr": 7e-3, "wd": 5e-4, "steps": 3, "sample_k": 3, "clipscore_weight": 2.5,
         "standardize": False, "reward_model": "self"},
        "self.sample_k = 3; self.amplify_rewards = 0; self.reward_process = 1; AdamW(trainable_param, lr=7e-3, "
        "weight_decay=5e-4); CLIPRewards(self.device, arch=args.arch, ...) (clipscore_weight=2.5); "
        "args.tta_steps = 3; args.selection_p = 0.1",
    ) | {"batch_size": 1},
}  # fmt: skip
# <<< TTA-VLM episodic
# >>> ViDA (vida)
# Yangsenqiao/vida@c26b0db: cifar/cfgs/{cifar10,cifar100}/vida.yaml, imagenet/cfgs/vit/vida.yaml;
# {cifar,imagenet}/conf.py (`--unc_thr` default 0.05 / 0.2, the bash scripts pass none; imagenet
# OPTIM.MOMENTUM 0.9, NESTEROV True);
# {cifar,imagenet}/vida.py: N = 10 views, rst_m=0.1 (cifar; imagenet: no restore), softmax_entropy (imagenet: symmetric)
_VIDA = dict(steps=1, rank_low=1, rank_high=128, mt=0.999, n_aug=10)
VIDA_CITED: dict[tuple[str, str], dict] = {
    ("vida", "cifar10-c"): authors(
        "Yangsenqiao/vida", "c26b0db", "cifar/cfgs/cifar10/vida.yaml",
        {**_VIDA, "optimizer": "adam", "lr": 1e-4, "vida_lr": 1e-5, "betas": (0.9, 0.999), "wd": 0.0,
         "mt_vida": 0.999, "unc_thr": 0.05, "rst": 0.1, "loss": "ce"},
        "BATCH_SIZE: 40, vida_rank1: 1, vida_rank2: 128, METHOD: Adam, BETA: 0.9, LR: 1e-4, ViDALR: 1e-5, WD: 0., "
        "MT: 0.999, MT_ViDA: 0.999",
    ) | {"batch_size": 40},
    ("vida", "cifar100-c"): authors(
        "Yangsenqiao/vida", "c26b0db", "cifar/cfgs/cifar100/vida.yaml",
        {**_VIDA, "optimizer": "adam", "lr": 3e-4, "vida_lr": 1e-6, "betas": (0.9, 0.999), "wd": 0.0,
         "mt_vida": 0.999, "unc_thr": 0.05, "rst": 0.1, "loss": "ce"},
        "BATCH_SIZE: 50, vida_rank1: 1, vida_rank2: 128, METHOD: Adam, BETA: 0.9, LR: 3e-4, ViDALR: 1e-6, WD: 0., "
        "MT: 0.999, MT_ViDA: 0.999",
    ) | {"batch_size": 50},
    ("vida", "imagenet-c"): authors(
        "Yangsenqiao/vida", "c26b0db", "imagenet/cfgs/vit/vida.yaml",
        {**_VIDA, "optimizer": "sgd", "lr": 5e-7, "vida_lr": 2e-7, "momentum": 0.9, "nesterov": True, "wd": 0.0,
         "mt_vida": 0.8, "unc_thr": 0.2, "rst": 0.0, "loss": "sce"},
        "BATCH_SIZE: 50, METHOD: SGD, LR: 5e-07, ViDALR: 2e-07, WD: 0.0, MT: 0.999, MT_ViDA: 0.8; conf.py "
        "vida_rank1 1, vida_rank2 128",
    ) | {"batch_size": 50},
}  # fmt: skip
# <<< ViDA
# >>> DPCore (dpcore)
# zybeich/DPCore@79b143f imagenet/cfgs/dpcore.yaml (PROMPT_NUM 8, THR_RHO 0.8, EMA_ALPHA 0.999, TEMP_TAU 3.0, STEPS 50,
# BATCH_SIZE 64), imagenet/conf.py SRC_NUM_SAMPLES 300; imagenet/dpcore.py: torch.optim.AdamW([prompts], lr=1e-1)
# (torch default weight_decay 0.01; the yaml's LR is never read), `ent < math.log(1000)/2-1`
DPCORE_CITED: dict[tuple[str, str], dict] = {
    ("dpcore", "imagenet-c"): authors(
        "zybeich/DPCore", "79b143f", "imagenet/cfgs/dpcore.yaml",
        dict(lr=0.1, wd=0.01, num_prompts=8, ood_steps=50, thr_rho=0.8, temp_tau=3.0, ema_alpha=0.999,
             src_samples=300, e_margin_frac=0.5, e_margin_offset=1.0),
        "PROMPT_NUM: 8, THR_RHO: 0.8, EMA_ALPHA: 0.999, TEMP_TAU: 3.0, STEPS: 50 (E_OOD), BATCH_SIZE: 64; "
        "dpcore.py AdamW([self.model.prompts], lr=1e-1); conf.py SRC_NUM_SAMPLES = 300",
    ) | {"batch_size": 64},
}  # fmt: skip
# <<< DPCore
_EATA_IN = dict(optimizer="sgd", lr=0.00025, momentum=0.9, nesterov=False, wd=0.0, steps=1, e_margin_frac=0.4,
                d_margin=0.05)  # fmt: skip
# >>> STAMP (stamp)
# yuyongcan/STAMP@dbdb2a9: cfgs/Online_TTA_os/{cifar10_c_noise,cifar100_c_noise,imagenet_c_places}/stamp.yaml
# (TEST.BATCH_SIZE 64; OPTIM.LR 0.0001 / 0.01 / none: src/utils/conf.py _C.OPTIM.LR = 1e-3); conf.py _C.STAMP.ALPHA
# = 0.5, _C.STAMP.NUM_AUG = 15; src/methods/setup.py setup_stamp: SAM(params, optim.SGD, lr=cfg.OPTIM.LR, rho=0.05);
# src/methods/stamp.py: RBM(64, num_class), `if num_class == 1000: max_iter = 750 else 150`, the norm_model filter
# only in the non-ImageNet branch; src/data/data.py get_stamp_transforms: get_tta_transforms for 'cifar10_c', else
# RandomCrop(size, padding=4) + RandomHorizontalFlip.
_STAMP = dict(optimizer="sgd", momentum=0.0, nesterov=False, wd=0.0, rho=0.05, alpha=0.5, num_aug=15, memory_size=64)
STAMP_CITED: dict[tuple[str, str], dict] = {
    ("stamp", fam): authors(
        "yuyongcan/STAMP", "dbdb2a9", f"cfgs/Online_TTA_os/{d}/stamp.yaml",
        {**_STAMP, "lr": lr, "augment": aug, "consistency_filter": fam != "imagenet-c",
         "cosine_t_max": 750 if fam == "imagenet-c" else 150},
        f"OPTIM: LR: {lr} (imagenet: conf.py default); SAM(params, optim.SGD, lr=cfg.OPTIM.LR, rho=0.05)",
    ) | {"batch_size": 64}
    for fam, d, lr, aug in (("cifar10-c", "cifar10_c_noise", 1e-4, "cotta"),
                            ("cifar100-c", "cifar100_c_noise", 0.01, "crop_flip"),
                            ("imagenet-c", "imagenet_c_places", 1e-3, "crop_flip"))
}  # fmt: skip
# <<< STAMP
CITED: dict[tuple[str, str], dict] = {
    # (method, family): the cited file and its values
    **DPCORE_CITED,
    **VIDA_CITED,
    **TTAVLM_CITED,
    **{(m, fam): suite(m, d, f"{m}.yaml") for m in ("adacontrast", "cmf", "deyo", "rmt", "roid", "rpl", "santa")
       for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100))},
    **{(m, "imagenet-c"): suite(m, _IN, f"{m}.yaml") for m in ("adacontrast", "cmf", "rmt", "roid", "rpl", "santa")},
    **{("alpha_bn", fam): suite("alpha_bn", d, "norm_alpha.yaml")
       for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100), ("imagenet-c", _IN))},
    ("alpha_bn", "segmentation"): seg("alpha_bn", "norm_alpha.yaml"),
    **{(m, fam): suite(m, d, f"{m}.yaml") for m in ("eata", "eta", "rdumb", "sar", "memo")
       for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100))},
    **{("lame", fam): suite("lame", d, "lame.yaml") for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100),
                                                                   ("imagenet-c", _IN))},
    **{("norm", fam): suite("norm", d, "norm_test.yaml") for fam, d in (("cifar100-c", _C100), ("imagenet-c", _IN))},
    ("norm", "segmentation"): seg("norm", "norm_test.yaml"),
    **{("bn_ema", fam): suite("bn_ema", d, "norm_ema.yaml") for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100),
                                                                          ("imagenet-c", _IN))},
    ("bn_ema", "segmentation"): seg("bn_ema", "norm_ema.yaml"),
    ("norm", "cifar10-c"): {"repo": "DequanWang/tent", "commit": "e9e926a", "path": "cfgs/norm.yaml",
                            "cfg": {**TENT_CONF, "TEST.BATCH_SIZE": 200}, "values": {}},
    ("tent", "cifar10-c"): {"repo": "DequanWang/tent", "commit": "e9e926a", "path": "cfgs/tent.yaml",
                            "cfg": (c := {**TENT_CONF, **_ADAM, "TEST.BATCH_SIZE": 200}), "values": _optim(c)},
    ("tent", "cifar100-c"): {"repo": "qinenergy/cotta", "commit": "c212a20", "path": "cifar/cfgs/cifar100/tent.yaml",
                             "cfg": (c := {**TENT_CONF, **_ADAM, "TEST.BATCH_SIZE": 200}), "values": _optim(c)},
    ("tent", "imagenet-c"): suite("tent", _IN, "tent.yaml"),
    ("tent", "segmentation"): seg("tent", "tent.yaml"),
    **{("cotta", fam): {"repo": "qinenergy/cotta", "commit": "c212a20", "path": f"cifar/cfgs/{d}/cotta.yaml",
                        "cfg": (c := {**COTTA_CIFAR_CONF, **_ADAM, "OPTIM.MT": 0.999, "OPTIM.RST": 0.01,
                                      "OPTIM.AP": ap, "TEST.BATCH_SIZE": 200}),
                        "values": TRANSLATE_COTTA_AUTHORS(c)}
       for fam, d, ap in (("cifar10-c", "cifar10", 0.92), ("cifar100-c", "cifar100", 0.72))},
    ("cotta", "imagenet-c"): {
        "repo": "qinenergy/cotta", "commit": "c212a20", "path": "imagenet/cfgs/10orders/cotta/cotta0.yaml",
        "cfg": (c := {**TENT_CONF, **_IN_SGD, "OPTIM.LR": 0.01, "TEST.BATCH_SIZE": 64}),  # + imagenet/conf.py
        # imagenet/cotta.py: alpha_teacher=0.999, `torch.rand(p.shape) < 0.001`, `anchor_prob.mean(0) < 0.1`, N = 32,
        # softmax_entropy = -0.5 (p_ema·log p) - 0.5 (p·log p_ema) (symmetric), teacher views only when below ap
        "values": {**_optim(c), "mt": 0.999, "rst": 0.001, "ap": 0.1, "n_aug": 32, "loss": "sce",
                   "always_augment": False},
    },
    ("cotta", "segmentation"): seg("cotta", "cotta.yaml") | {"values": {
        **seg("cotta", "cotta.yaml")["values"],
        # segmentation/methods/cotta.py: softmax_entropy = -(p_ema·log p).sum(1); `if anchor_prob.mean() < self.ap:`
        # create_ensemble_pred; scale_ratios [0.5 .. 1.75] x 0.5 x crop size [1024, 512] = 0.25 .. 0.875 of the
        # input, each view randomly flipped, averaged with the plain teacher prediction
        "loss": "ce", "always_augment": False, "scales": (0.25, 0.375, 0.5, 0.625, 0.75, 0.875),
    }},
    **{("rotta", fam): {"repo": "BIT-DA/RoTTA", "commit": "67e34c9", "path": "configs/adapter/rotta.yaml",
                        "cfg": (c := {**ROTTA_CONF, **_ADAM, "TEST.BATCH_SIZE": 64}),
                        "values": TRANSLATE_ROTTA_AUTHORS(c)} for fam in ("cifar10-c", "cifar100-c")},
    ("rotta", "imagenet-c"): suite("rotta", _IN, "rotta.yaml"),
    **{("tta_aug", fam): suite("tta_aug", d, "conf.py") | {"batch_size": 1}
       for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100), ("imagenet-c", _IN))},
    ("tpt", "imagenet-c"): suite("tpt", _IN, "tpt.yaml"),
    ("vte", "imagenet-c"): suite("vte", _IN, "vte.yaml"),
    ("eata", "imagenet-c"): authors(
        "mr-eggplant/EATA", "f739b36", "main.py", {**_EATA_IN, "fisher_alpha": 2000.0, "fisher_size": 2000},
        "optimizer = torch.optim.SGD(params, 0.00025, momentum=0.9); --e_margin math.log(1000)*0.40; --d_margin "
        "0.05; --fisher_alpha 2000.; --fisher_size 2000; --batch_size 64",
    ),
    ("eta", "imagenet-c"): authors("mr-eggplant/EATA", "f739b36", "main.py", _EATA_IN,
                                   "algorithm eta: SGD(params, 0.00025, momentum=0.9), e_margin, d_margin as EATA"),
    ("sar", "imagenet-c"): authors(
        "mr-eggplant/SAR", "20f6e24", "main.py",
        dict(optimizer="sgd", lr=0.00025, momentum=0.9, nesterov=False, wd=0.0, rho=0.05, steps=1, margin_e0_frac=0.4,
             reset_constant=0.2),
        "resnet50_bn_torch: args.lr = 0.00025 (bs >= 32); SAM(params, torch.optim.SGD, lr=args.lr, momentum=0.9); "
        "sam.py rho=0.05; sar.py SAR(steps=1); --sar_margin_e0 math.log(1000)*0.40; sar.py `if ema < 0.2` "
        "(reset_constant_em=0.2)",
    ),
    ("deyo", "imagenet-c"): authors(
        "Jhyun17/DeYO", "3d7d289", "exp_deyo.sh",
        dict(optimizer="sgd", lr=0.00025, momentum=0.9, nesterov=False, wd=0.0, steps=1, margin=0.5, margin_e0=0.4,
             plpd_threshold=0.3, reweight_ent=True, reweight_plpd=True, aug_type="patch", patch_len=4,
             occlusion_size=112, row_start=56, column_start=56),
        "mild setting (resnet50_bn_torch): ETHR=0.5 EMAR=0.4 DTHR=0.3; main.py: SGD(params, args.lr, momentum=0.9), "
        "args.lr 0.00025 at bs 64; config.py: --aug_type patch --patch_len 4 --occlusion_size 112 --row_start 56 "
        "--column_start 56 --reweight_ent 1 --reweight_plpd 1",
    ),
    ("rdumb", "imagenet-c"): authors(
        "oripress/CCC", "656dec3", "models/rdumb.py",
        dict(optimizer="sgd", lr=0.00025, momentum=0.9, nesterov=False, wd=0.0, steps=1, e_margin_frac=0.4,
             d_margin=0.05, reset_every=1000),
        "self.e_margin = math.log(1000) * 0.4; self.d_margin = 0.05; torch.optim.SGD(params, 0.00025, momentum=0.9); "
        "`if self.total_steps % 1000 == 0` (reset)",
    ),
    ("memo", "imagenet-c"): authors(
        "zhangmarvin/memo", "228b290", "imagenet-exps/script_test_in.py",
        dict(optimizer="sgd", lr=0.00025, momentum=0.0, nesterov=False, wd=0.0, steps=1, n_aug=64,
             prior_strength=16),
        "rn50: optimizer sgd, lr 0.00025, weight_decay 0.0; test_calls/test_adapt.py: optim.SGD(net.parameters(), "
        "lr=args.lr, weight_decay=args.weight_decay) (no momentum), --batch_size 64, --prior_strength 16, --niter 1",
    ),
    ("tda", "imagenet-c"): authors(
        "kdiAAA/TDA", "e697fb0", "configs/imagenet.yaml",
        dict(n_aug=0, selection_p=0.1, templates="tda7", pos_shot_capacity=3, pos_alpha=2.0, pos_beta=5.0,
             neg_shot_capacity=2, neg_alpha=0.117, neg_beta=1.0, neg_entropy_lower=0.2, neg_entropy_upper=0.5,
             neg_mask_lower=0.03, neg_mask_upper=1.0),
        "positive: shot_capacity 3, alpha 2.0, beta 5.0; negative: shot_capacity 2, alpha 0.117, beta 1.0, "
        "entropy_threshold 0.2/0.5, mask_threshold 0.03/1.0; utils.py: ImageNet ('I') uses `preprocess` (no views), "
        "batch_entropy top 10 % (`* 0.1`); datasets/imagenet.py: the 7 imagenet_templates",
    ),
    ("dmn", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "online_method/dmn.py",
        dict(n_aug=63, augmix=False, selection_p=0.1, templates="model", memory_size=50, alpha=1.0, beta=5.5),
        "self.beta = 5.5; self.alpha = 1.0; self.max_len = 50; online_tta.py: aug_bs = 64, AugMixAugmenter(..., "
        "n_views=aug_bs-1, augmix=len(dset)>1) (ImageNet 'I': no AugMix), --selection_p 0.1; README: --ctx_init "
        "a_photo_of_a -b 1",
    ),
    ("onzeta", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "online_method/onzeta.py",
        dict(templates="model", cw=0.5, cr=20.0, beta=0.8, alpha=1.0, tau_i=0.04, tau_t=0.01, stream_length=50000),
        "self.cw = 0.5; self.cr = 20; self.beta = 0.8 (`if len(args.test_sets) <= 1`); self.alpha = 1; "
        "self.tau_i = 0.04; self.tau_t = 0.01; beta * math.sqrt((self.ii + 1) / args.loader_len) (loader_len: "
        "50,000 ImageNet validation images at -b 1); README: --ctx_init a_photo_of_a",
    ),
    ("boostadapter", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "online_method/boostadapter.py",
        dict(n_aug=63, augmix=False, selection_p=0.1, templates="model", pos_shot_capacity=3, delta=1,
             pos_alpha=2.0, pos_beta=5.0, neg_shot_capacity=2, neg_alpha=0.117, neg_beta=1.0,
             neg_entropy_lower=0.2, neg_entropy_upper=0.5, neg_mask_lower=0.03, neg_mask_upper=1.0),
        "pos_params alpha 'I': 2.0, beta 'I': 5.0; delta_params 'I': 1; pos_shot_capacity = 3; neg_alpha = 0.117; "
        "neg_beta = 1.0; `0.2 < ent0/math.log2(num_classes) ... < 0.5`, update_cache(self.neg_cache, ..., 2, True); "
        "(0.03, 1.0); select_confident_samples(..., 0.1); online_tta.py: aug_bs = 64, augmix=len(dset)>1",
    ),
    ("dpe", "imagenet-c"): authors(
        "TomSheng21/tta-vlm", "bcc735f", "online_method/dpe.py",
        dict(n_aug=63, augmix=False, selection_p=0.1, templates="model", pos_shot_capacity=3, pos_alpha=6.0,
             pos_beta=5.0, text_lr=0.0006, image_lr=0.0006, align=0.5, steps=1, eps=1e-3, wd=0.1,
             evolve_threshold=0.1, predict_views=False),
        "pos_params alpha 'I': 6.0, beta 'I': 5.0; lr_params text/image 'I': 0.0006, align 'I': 0.5; "
        "pos_shot_capacity = 3; select_confident_samples(..., 0.1); steps = 1; AdamW(..., 'eps': 1e-3, "
        "'weight_decay': 1e-1); `if loss/math.log2(num_classes) < 0.1`; `if args.test_sets == 'A'` (views); "
        "online_tta.py: aug_bs = 64, augmix=len(dset)>1",
    ),
    **{("actmad", fam): authors(
        "jmiemirza/ActMAD", "401544d", "init.py",
        dict(optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, wd=5e-4, steps=1, loss_factor=0.5),
        f"init.py: `args.lr = {lr}` ({d}), `args.batch_size = 128`; methods/actmad_cifar.py: optim.SGD(net.parameters("
        "), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True); `loss = (loss_mean + loss_var) * 0.5`, one "
        "step per batch",
    ) for fam, lr, d in (("cifar10-c", 1e-2, "cifar10"), ("cifar100-c", 1e-3, "cifar100"),
                         ("imagenet-c", 25e-5, "imagenet"))},
    **{("note", fam): authors(
        "TaesikGong/NOTE", "a714a2a", "tta.sh",
        dict(optimizer="adam", lr=0.0001, betas=(0.9, 0.999), wd=0.0, steps=1, memory="pbrs", memory_size=64,
             update_every=64, bn_momentum=0.01, iabn=True, iabn_k=4.0, skip_thres=1, temperature=1.0),
        "METHOD=NOTE (every dataset): lr=0.0001 EPOCH=1 memory_type=PBRS memory_size=64 update_every_x=64 "
        "bn_momentum=0.01 --iabn iabn_k=4 weight_decay=0; main.py: --temperature 1.0, --skip_thres 1; "
        "learner/dnn.py: optim.Adam(params, lr, weight_decay) (default betas)",
    ) for fam in ("cifar10-c", "cifar100-c", "imagenet-c")},
    **{("unmix_tns", fam): authors(
        "devavratTomar/unmixtns", "8e12b9f", "tta_experiments/run.sh",
        dict(num_components=16, batch_size_max=bmax, momentum=None, alpha=0.5, tau=0.07),
        f"{d}: TEST.BATCH_SIZE {bs}{' UNMIXTNS.BATCH_SIZE_MAX 16' if bmax == 16 else ''}; UNMIXTNS.NUM_COMPONENTS 16 "
        "(not mixed_domains); conf.py UNMIXTNS.BATCH_SIZE_MAX 64; unmixtns.py: coeff = 0.5, softmax(sim / 0.07), "
        "M = 1 - bn_layer.momentum (then ** (bs / bs_max))",
    ) | {"batch_size": bs} for fam, d, bs, bmax in (("cifar10-c", "cifar10_c", 64, 64),
                                                    ("cifar100-c", "cifar100_c", 64, 64),
                                                    ("imagenet-c", "imagenet_c", 16, 16))},
    ("spa", "imagenet-c"): authors(  # SPA
        "mr-eggplant/SPA", "b4a66ea", "main.py",
        dict(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=False, wd=0.0, predictor_lr=0.05, freq_mask_ratio=0.2,
             noise_ratio=0.4, aux="none", e_margin_frac=0.4, d_margin=0.05),
        "vitbase_timm: SGD([{'params': params, 'lr':0.01, 'momentum':0.9}, {'params': net.predictor.parameters(), "
        "'lr':0.05, 'momentum':0.9}]); mask_ratio, noise_ratio = 0.2, 0.4; --algorithm spa; --e_margin "
        "math.log(1000)*0.40; --d_margin 0.05; --batch_size 64",
    ),
    ("foa", "imagenet-c"): authors(  # FOA
        "mr-eggplant/FOA", "004b02d", "main.py",
        dict(num_prompts=3, fitness_lambda=0.4, popsize=27, cma_sigma=1.0, seed=2020, shift_alpha=1.0),
        "--num_prompts 3 --fitness_lambda 0.4 --batch_size 64; tta_library/foa.py: popsize = 27, cma_opts seed 2020, "
        "cma.CMAEvolutionStrategy(dim * [0], 1, ...); `cls_features + 1. * shift_vector`",
    ),
    ("tea", "cifar10-c"): authors(
        "yuanyige/tea", "66e7ffa", "cfgs/cifar10/energy.yaml",
        dict(optimizer="adam", lr=0.001, betas=(0.9, 0.999), wd=0.0, steps=1, sgld_steps=20, sgld_lr=0.1,
             sgld_std=0.01, buffer_size=10000, reinit_freq=0.05, sampling="uncond"),
        "EBM: UNCOND uncond, STEPS 20, SGLD_LR 0.1, SGLD_STD 0.01, BUFFER_SIZE 10000, REINIT_FREQ 0.05; OPTIM: "
        "BATCH_SIZE 200, METHOD Adam, STEPS 1, BETA 0.9, LR 0.001, WD 0.; core/optim.py: optim.Adam(params, "
        "lr=cfg.OPTIM.LR, betas=(cfg.OPTIM.BETA, 0.999), weight_decay=cfg.OPTIM.WD)",
    ) | {"batch_size": 200},
    **{("gtta", fam): authors(
        SUITE, SUITE_AT, f"classification/cfgs/{d}/gtta.yaml",
        dict(optimizer="adam", lr=1e-5, betas=(0.9, 0.999), wd=0.0, steps=1, lam=1 / 3),
        "TEST.BATCH_SIZE 200; OPTIM: METHOD Adam, STEPS 1, BETA 0.9, LR 1e-5, WD 0.; conf.py: GTTA.LAMBDA_MIXUP 1/3, "
        "GTTA.USE_STYLE_TRANSFER False (the mixup variant); methods/base.py setup_optimizer: Adam(betas=(BETA, 0.999))",
    ) | {"batch_size": 200} for fam, d in (("cifar10-c", _C10), ("cifar100-c", _C100))},
}  # fmt: skip
# The official batch sizes of the authors' scripts (shown by the presets, never applied)
CITED.update(STAMP_CITED)  # stamp: open-world TTA (issue #28)
AUTHOR_BATCH = {("eata", "imagenet-c"): 64, ("eta", "imagenet-c"): 64, ("sar", "imagenet-c"): 64,
                ("memo", "imagenet-c"): 1, ("tda", "imagenet-c"): 1,
                ("dmn", "imagenet-c"): 1, ("dpe", "imagenet-c"): 1, ("onzeta", "imagenet-c"): 1,
                ("boostadapter", "imagenet-c"): 1,
                ("foa", "imagenet-c"): 64, ("spa", "imagenet-c"): 64,
                **{("actmad", fam): 128 for fam in ("cifar10-c", "cifar100-c", "imagenet-c")}}  # fmt: skip

# Options our adapters have that the cited code has no value for (the reason), checked to be all there is.
NOT_CITED: dict[str, dict[str, str]] = {
    "memo": {"crop": "our pre-augmentation choice; auto = the official per-resolution crop"},
    "rmt": {"replay_size": "our replay buffer (the official cycles an endless source loader; see rmt docstring)"},
    "sar": {"skip_layers": "the official skips model-specific top layers in collect_params (code, not config)"},
    "lame": {"feature_layer": "ours: which layer's features build the affinity (official: the model's features)",
             "output": "ours: probabilities or their log as the returned scores"},
    "cotta": {"scales": "ours: the multi-scale test-time augmentation of the segmentation code (not in a config)"},
    "tda": {"augmix": "ImageNet ('I'): no views, so AugMix is never used (n_aug 0)"},
    "tta_aug": {"crop": "our pre-augmentation choice; auto = the official per-resolution crop"},
    "gtta": {"replay_size": "ours: source images kept for the source step (the official cycles an endless loader)"},
    "vida": {"target": "ours: where adapters go on models without attention (the official is ViT-only)",
             "scale_high": "ours: the paper's allotment of both scales (the official code sets the low-rank one only)",
             "warmup_epochs": "ours: the official starts from released source-ViDA checkpoints (no training code)",
             "warmup_lr": "ours: the warm-up's learning rate (see warmup_epochs)"},
    "foa": {"source_size": "the official computes the source statistics on a whole loader (ImageNet val), no value"},
}  # fmt: skip
# Per (method, family): options the cited file does not fix for that family (so our class default stands).
NOT_CITED_FAMILY: dict[tuple[str, str], dict[str, str]] = {
    ("cotta", "segmentation"): {"n_aug": "dense outputs use the `scales` views; n_aug is not read"},
}
# Deviations forced by a stated reason (also in the method's docstring): {(method, family): {option: reason}}
DEVIATIONS: dict[tuple[str, str], dict[str, str]] = {
    ("cotta", "segmentation"): {
        "scales": "a different view scheme, not a value: ours every factor with and without a flip (CoTTA's ACDC "
        "0.5-2.0), the suite's 6 randomly flipped views plus the plain teacher (cotta docstring)",
    },
}

_OPTIMIZER_KEYS = {"adam": {"lr", "betas", "wd"}, "adamw": {"lr", "betas", "wd"},
                   "sgd": {"lr", "momentum", "nesterov", "wd"}}  # fmt: skip


def preset_pairs() -> list[tuple[str, str]]:
    return [(m, fam) for m in methods.names() for fam in methods.get(m).presets]


def resolved(method: str, family: str) -> dict:
    return resolve(RunConfig(method=method, stream="digits-c", preset=family)).method_opts


def test_every_preset_is_cited_here() -> None:
    assert sorted(preset_pairs()) == sorted(CITED), "a preset without cited values here, or cited values without one"


@pytest.mark.parametrize(("method", "family"), sorted(CITED))
def test_preset_cites_the_file_and_holds_its_values(method: str, family: str) -> None:
    cited, cls = CITED[(method, family)], methods.get(method)
    preset = cls.presets[family]
    repo, rest = preset["source"].split(":", 1)
    assert repo == cited["repo"] and rest.startswith(cited["path"]) and rest.endswith("@" + cited["commit"])
    if "batch_size" in preset:  # the official batch size (shown, not applied)
        batch = cited.get("batch_size") or AUTHOR_BATCH.get((method, family)) or cited["cfg"]["TEST.BATCH_SIZE"]
        assert preset["batch_size"] == batch
    if "cfg" in cited:
        assert cited["cfg"].get("OPTIM.DAMPENING", 0.0) == 0.0  # we have no dampening option
        if method in ("eta", "rdumb"):
            assert cited["cfg"]["EATA.FISHER_ALPHA"] == 0.0  # the suite runs ETA/RDumb as EATA without Fisher
    ours, values = resolved(method, family), dict(cited["values"])
    deviations = DEVIATIONS.get((method, family), {})
    optimizer = values.get("optimizer", ours.get("optimizer"))
    skip = {k for k in ("betas", "momentum", "nesterov") if optimizer and k not in _OPTIMIZER_KEYS[optimizer]}
    compared = {k: v for k, v in values.items() if k not in skip and k not in deviations}
    wrong = {k: (ours.get(k), v) for k, v in compared.items() if not _equal(ours.get(k), v)}
    assert not wrong, f"{method} {family}: ours != cited {cited['repo']}:{cited['path']}: {wrong}"
    unaccounted = (set(ours) - set(values) - skip - set(NOT_CITED.get(method, {}))
                   - set(NOT_CITED_FAMILY.get((method, family), {})))  # fmt: skip
    assert not unaccounted, f"{method} {family}: options with no cited value and no reason: {sorted(unaccounted)}"
    for k in deviations:
        assert k in values and not _equal(ours[k], values[k]), f"{method} {family}: deviation {k} is not one"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12)
    return type(a) is type(b) and a == b


def test_known_fixes_hold() -> None:
    """memo's CIFAR preset runs the suite's SGD (momentum 0.9, Nesterov); the citations name commits."""
    memo = resolved("memo", "cifar10-c")
    assert (memo["optimizer"], memo["momentum"], memo["nesterov"]) == ("sgd", 0.9, True)
    assert resolved("memo", "imagenet-c")["momentum"] == 0.0  # the authors' plain SGD
    assert all("@" in methods.get(m).presets[f]["source"] for m, f in preset_pairs())
