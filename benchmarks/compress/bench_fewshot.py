"""Few-shot compression benchmark on the pretrained CIFAR-10 ResNet-20 (issue 16), in three steps:

    # accuracy rows (CPU-heavy, run under `cpujob shared`); resumable: finished rows are skipped
    python benchmarks/compress/bench_fewshot.py run --train ../shared/data/cifar10_train.npz \
        --test ../shared/data/cifar10_test_dev.npz --checkpoint ../shared/data/resnet20_cifar10.th [--rows main,k1,...]
    # latency of the saved models (timing: run under `cpujob exclusive`; short)
    python benchmarks/compress/bench_fewshot.py latency --test ../shared/data/cifar10_test_dev.npz --checkpoint ...
    # tables -> benchmarks/results/compress/fewshot.md / fewshot.json
    python benchmarks/compress/bench_fewshot.py report

Data: K images per class drawn (seed 0) from cifar10_train.npz outside a seeded class-balanced validation split
(100 per class) that is the only split anything was tuned on; every reported accuracy is top-1 on
cifar10_test_dev.npz (5,000 real test images). Each row records the wall and CPU time of the compression itself
and the load average (the machine is shared). Models are kept in --models (not in the repository) for the
latency step, which times eager PyTorch (BatchNorm folded) and ONNX Runtime at batch 1 and 64, interleaved.
"""
import argparse
import copy
import json
import os
import platform
import re
import sys
import time

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the checkpoint's training normalisation
MAIN = "prune(macs=0.5,coupled=false),distill(features=0),fold"
# the recipe this session's ablations point to: the same kept fraction per layer, block-output feature matching
BEST = "prune(macs=0.5,coupled=false,scope=layer),distill(method=finetune,features=10,feature_at=blocks),fold"
# round 3: the longer, BN-recalibrated fine-tune (2.7x the compression time of BEST)
BEST2 = ("prune(macs=0.5,coupled=false,scope=layer),"
         "distill(method=finetune,bnrecal=true,features=10,feature_at=blocks,steps=4000),fold")
BEST2_RECOVERY = BEST2.split("),", 1)[1]  # its distill + fold, after the prune
# round 5: the structure bench_structure.py found fastest at ~2.2x fewer MACs (3 blocks dropped, widths in 8s)
DROP3_G8 = "drop(blocks=3),prune(macs=0.72,coupled=false,round_to=8)," + BEST2_RECOVERY
# round 6: the budget driver picks drop/prune/rounding itself for ONNX Runtime batch 1 at 1.7x the checkpoint's
# speed ({ms}: resolved at run time on this machine, see ort_target_ms)
BUDGET17 = "budget(target_latency_ms={ms},runtime=onnxruntime,coupled=false,round_to=8,blocks=true)," + BEST2_RECOVERY
SPEEDUP = 1.7
# round 6: per-layer widths by measured sensitivity (the budget driver) instead of the same fraction per layer
BUDGET_MACS = "budget(target_macs=0.5,coupled=false)," + BEST2_RECOVERY
# round 7: the same after dropping 2 blocks, to half the MACs of the checkpoint (of=original), not of the dropped model
DROP_BUDGET = "drop(blocks=2),budget(target_macs=0.5,of=original,coupled=false)," + BEST2_RECOVERY
SYNTH = "synth(n=256,iters=200)"
BUDGET_F20 = BUDGET_MACS.replace("features=10", "features=20")  # round 8's best: block-output MSE weight 20
BUDGET_F40 = BUDGET_MACS.replace("features=10", "features=40")
# round 10: the same MACs reached in two steps (0.7x, then 0.5x of the checkpoint), the 4000 function-matching
# steps split between them (gradual pruning: each step removes less before it is recovered)
_F40_HALF = BEST2_RECOVERY.replace("features=10", "features=40").replace("steps=4000", "steps=2000")  # distill,fold
BUDGET_F40_ITER = ("budget(target_macs=0.7,coupled=false)," + _F40_HALF.removesuffix(",fold")
                   + ",budget(target_macs=0.5,of=original,coupled=false)," + _F40_HALF)
PQ15_F40 = "pq(sub_dim=2,k=4,ec_iters=4,features=40,target_ratio=15,k_max=32)"  # round 9: pq_alloc15_k4 at weight 40
# round 11: the same images seen in twice the updates (batch 32 x 8000 steps; b128 x 2000 was worse than b64 x 4000)
BUDGET_F40_B32 = BUDGET_F40.replace("steps=4000", "steps=8000,batch_size=32")
BUDGET_F40_BNTRAIN = BUDGET_F40.replace("steps=4000", "steps=4000,bn=train")  # round 11: batch statistics in training
PQ15_F40_3K = PQ15_F40.replace("features=40", "features=40,steps=3000")  # round 11: 3x the codeword fine-tune
# round 12: L2-SP, the weights pulled towards where function matching started (Li et al. 2018 use 0.01 and 0.1)
BUDGET_F40_L2SP = {a: BUDGET_F40.replace("steps=4000", f"steps=4000,anchor={a}") for a in ("0.01", "0.1")}
# round 12: half of each batch moved one signed-gradient step up the KD loss (step x the input std): more diverse views
BUDGET_F40_ADV = {a: BUDGET_F40.replace("steps=4000", f"steps=4000,adv={a}") for a in ("0.03", "0.1")}
# round 13: the per-layer widths chosen by each candidate's error after BatchNorm re-estimation (EagleEye's adaptive BN)
BUDGET_F40_RECAL = BUDGET_F40.replace("coupled=false)", "coupled=false,recal=true)", 1)
# round 13: the target a two-view ensemble (the teacher on each view and its mirror image), run on all 3 draws at once
# (features too, or the logits only; draw 0 of each, the one better on validation then on draws 1 / 2)
BUDGET_F40_TTA = {t: BUDGET_F40.replace("steps=4000", f"steps=4000,tta={t}") for t in ("flip", "flip_logits")}

def _on_three_draws(name, recipe, note):
    """Row ``name`` on image draw 0 (K=10) and its twins ``name_s1``, ``name_s2`` on draws 1 and 2."""
    return {name: (recipe, 10, note),
            **{f"{name}_s{d}": (recipe, 10, f"{name}, image draw seed {d}", d) for d in (1, 2)}}


ROWS = {
    # name: (recipe, K, note). The recipe runs through slimkit.compress(); K=0 = data-free.
    "main": (MAIN, 10, "slimkit's default recipe before block-output features (distill features=0)"),
    "k1": (MAIN, 1, "accuracy vs K"),
    "k5": (MAIN, 5, "accuracy vs K"),
    "datafree": (f"{SYNTH},prune(macs=0.5,coupled=false),distill(features=0),fold", 0, "synthetic images only"),
    "plain": ("prune(macs=0.5,coupled=false,criterion=l2),bnrecal,"
              "distill(method=finetune,steps=600,mix=mixup,flip=on,features=0),fold", 10, "the issue's plain recipe"),
    "abl_keep": ("prune(macs=0.5,coupled=false),distill(select=keep,features=0),fold", 10, "ablation: no re-selection"),
    "abl_nolayer": ("prune(macs=0.5,coupled=false),distill(method=finetune,features=0),fold", 10,
                    "ablation: no layer-wise stage (function matching only)"),
    "abl_bnrecal": ("prune(macs=0.5,coupled=false),distill(bnrecal=true,features=0),fold", 10, "ablation: + BN recalibration"),
    "abl_noaug": ("prune(macs=0.5,coupled=false),distill(mix=none,flip=off,features=0),fold", 10,
                  "ablation: crops only (no flips, no mixup/cutmix)"),
    "abl_synth": (f"{SYNTH},prune(macs=0.5,coupled=false),distill(features=0),fold", 10, "ablation: + synthetic images"),
    "abl_drop": ("drop(blocks=2),prune(macs=0.6,coupled=false),distill(features=0),fold", 10, "ablation: block dropping + pruning"),
    "feat_pen": ("prune(macs=0.5,coupled=false),distill(features=1),fold", 10,
                 "+ penultimate-feature MSE in function matching (MiR)"),
    "feat_blocks": ("prune(macs=0.5,coupled=false),distill(features=1,feature_at=blocks),fold", 10,
                    "+ every block's output MSE in function matching"),
    "feat_resized": ("prune(macs=0.5,coupled=false),distill(features=1,feature_at=blocks,crop=resized),fold", 10,
                     "block-output MSE + random-resized crops"),
    "abl_layer": ("prune(macs=0.5,coupled=false,scope=layer),distill(features=0),fold", 10,
                  "ablation: the same kept fraction in every layer (no global ranking)"),
    "feat3_blocks": ("prune(macs=0.5,coupled=false),distill(features=3,feature_at=blocks),fold", 10,
                     "block-output MSE, weight 3"),
    "feat10_blocks": ("prune(macs=0.5,coupled=false),distill(features=10,feature_at=blocks),fold", 10,
                      "block-output MSE, weight 10"),
    "layer_feat10": ("prune(macs=0.5,coupled=false,scope=layer),distill(features=10,feature_at=blocks),fold", 10,
                     "per-layer kept fraction + block-output MSE weight 10"),
    "feat30_blocks": ("prune(macs=0.5,coupled=false),distill(features=30,feature_at=blocks),fold", 10,
                      "block-output MSE, weight 30"),
    "round8": ("prune(macs=0.5,coupled=false,round_to=8),distill(features=0),fold", 10,
               "kept channels rounded to multiples of 8 (vector width of the CPU kernels)"),
    "synth1024_feat": ("synth(n=1024,iters=100),prune(macs=0.5,coupled=false),distill(features=1,feature_at=blocks),fold",
                       10, "+ 1,024 synthetic images and block-output MSE: does more data close the gap?"),
    "drop_feat3": ("drop(blocks=2),prune(macs=0.6,coupled=false),distill(features=3,feature_at=blocks),fold", 10,
                   "block dropping + pruning, block-output MSE weight 3"),
    "layer_ft_feat10": ("prune(macs=0.5,coupled=false,scope=layer),distill(method=finetune,features=10,feature_at=blocks),fold",
                        10, "per-layer kept fraction, function matching only (no layer-wise stage), block-output MSE 10"),
    "best_s1": (BEST, 10, "recommended recipe, image draw seed 1", 1),
    "best_s2": (BEST, 10, "recommended recipe, image draw seed 2", 2),
    "best_bnrecal": (BEST.replace("distill(method=finetune,", "distill(method=finetune,bnrecal=true,"), 10,
                     "recommended recipe + BatchNorm recalibration before function matching"),
    "best_k5": (BEST, 5, "accuracy vs K"),
    "best_k1": (BEST, 1, "accuracy vs K"),
    "best_datafree": (f"{SYNTH},{BEST}", 0, "synthetic images only"),
    "best_synth": (f"synth(n=1024,iters=100),{BEST}", 10, "+ 1,024 synthetic images"),
    # round 3 (2026-12-02): what closes the remaining gap? one change at a time against BEST, image draw seed 0
    "best_long": (BEST.replace("feature_at=blocks)", "feature_at=blocks,steps=4000)"), 10,
                  "recommended recipe, 4000 function-matching steps (default 1500)"),
    "best_lr03": (BEST.replace("feature_at=blocks)", "feature_at=blocks,lr=0.03)"), 10, "recommended recipe, peak lr 0.03"),
    "best_t4": (BEST.replace("feature_at=blocks)", "feature_at=blocks,temperature=4)"), 10,
                "recommended recipe, KL temperature 4"),
    "best_iter": ("prune(macs=0.7,coupled=false,scope=layer),distill(method=finetune,features=10,feature_at=blocks,steps=750),"
                  "prune(macs=0.715,coupled=false,scope=layer),distill(method=finetune,features=10,feature_at=blocks,steps=750),fold",
                  10, "two-step pruning (0.7x then 0.5x MACs), 750 function-matching steps after each"),
    "best_bnscale": (BEST.replace("scope=layer)", "scope=layer,criterion=bn_scale)"), 10,
                     "recommended recipe, channels ranked by BatchNorm scale"),
    "best_bnrecal_s2": (BEST.replace("distill(method=finetune,", "distill(method=finetune,bnrecal=true,"), 10,
                        "recommended recipe + BatchNorm recalibration, image draw seed 2", 2),
    "best_group": (BEST.replace("scope=layer)", "scope=layer,criterion=group_l1)"), 10,
                   "recommended recipe, channels ranked by group L1 (producer + consumers + BN scale)"),
    "best_bnrecal_s1": (BEST.replace("distill(method=finetune,", "distill(method=finetune,bnrecal=true,"), 10,
                        "recommended recipe + BatchNorm recalibration, image draw seed 1", 1),
    # round 3's result: the two changes that helped on their own (4000 steps +1.5 pt, BN recalibration +0.6/+0.8 pt)
    "best2": (BEST2, 10, "recommended + BN recalibration + 4000 function-matching steps, image draw seed 0"),
    "best2_s1": (BEST2, 10, "recommended + BN recalibration + 4000 steps, image draw seed 1", 1),
    "best2_s2": (BEST2, 10, "recommended + BN recalibration + 4000 steps, image draw seed 2", 2),
    "best2_coupled": (BEST2.replace("coupled=false", "coupled=true"), 10,
                      "BEST2 with the residual stream pruned too (every channel group, same kept fraction per layer)"),
    # round 4 (2026-12-02): an exponential moving average of the fine-tuned weights (window ~1000 steps)
    "best2_ema": (BEST2.replace("steps=4000)", "steps=4000,ema=0.999)"), 10,
                  "BEST2 + weight EMA (decay 0.999), image draw seed 0"),
    "best2_ema_s1": (BEST2.replace("steps=4000)", "steps=4000,ema=0.999)"), 10,
                     "BEST2 + weight EMA (decay 0.999), image draw seed 1", 1),
    "best2_drop": ("drop(blocks=2)," + BEST2.replace("macs=0.5", "macs=0.6"), 10,
                   "BEST2 after dropping 2 residual blocks (latency-aware structure), then pruning to the same MACs"),
    "best2_drop_s1": ("drop(blocks=2)," + BEST2.replace("macs=0.5", "macs=0.6"), 10,
                      "best2_drop, image draw seed 1", 1),
    "best2_drop_s2": ("drop(blocks=2)," + BEST2.replace("macs=0.5", "macs=0.6"), 10,
                      "best2_drop, image draw seed 2, alone on the machine with 2 torch threads (the wall time on 2 cores)", 2),
    # round 5 (2026-12-03): the structures bench_structure.py found fastest in ONNX Runtime, with BEST2's recovery
    "best2_drop3g8": (DROP3_G8, 10,
                      "BEST2's recovery after dropping 3 blocks and pruning (global ranking, kept channels in multiples of 8)"),
    "best2_drop3g8_s1": (DROP3_G8, 10,
                         "best2_drop3g8, image draw seed 1, alone on the machine with 2 torch threads", 1),
    "best2_droponly": ("drop(macs=0.5)," + BEST2_RECOVERY, 10,
                       "BEST2's recovery after dropping blocks only (5 of 9), no channel pruning"),
    # round 6 (2026-12-03)
    "best2_budget17": (BUDGET17, 10, "budget(blocks=true) for 1.7x the checkpoint's ORT batch-1 speed, then BEST2's "
                       "recovery; 2 torch threads, the search alone, the fine-tune beside one other 1-thread row"),
    "best2_budget_macs": (BUDGET_MACS, 10,
                          "per-layer widths by measured sensitivity (budget driver, AIMET-style) instead of the same "
                          "fraction per layer, then BEST2's recovery"),
    "best2_budget_macs_s1": (BUDGET_MACS, 10,
                             "best2_budget_macs, image draw seed 1", 1),
    "best2_budget_macs_s2": (BUDGET_MACS, 10,
                             "best2_budget_macs, image draw seed 2", 2),
    "best2_drop_r8": ("drop(blocks=2)," + BEST2.replace("macs=0.5", "macs=0.6").replace("scope=layer", "scope=layer,round_to=8"),
                      10, "best2_drop with kept widths in multiples of 8 (the MAC search now gives rounding units back)"),
    "best2_drop_8k": ("drop(blocks=2)," + BEST2.replace("macs=0.5", "macs=0.6").replace("steps=4000", "steps=8000"), 10,
                      "best2_drop with 8000 function-matching steps (twice): does more patience pay?"),
    # round 7 (2026-12-03): sensitivity widths with block dropping in the same sweep, after drop(blocks=2), and longer
    "best2_budget_blocks": ("budget(target_macs=0.5,coupled=false,blocks=true)," + BEST2_RECOVERY, 10,
                            "budget_macs with every residual block as one more option in the same sensitivity sweep"),
    "best2_drop_budget": (DROP_BUDGET, 10,
                          "drop(blocks=2), then per-layer widths by measured sensitivity to half the checkpoint's MACs"),
    "best2_budget_macs_8k": (BUDGET_MACS.replace("steps=4000", "steps=8000"), 10,
                             "best2_budget_macs with 8000 function-matching steps"),
    "best2_drop_budget_s1": (DROP_BUDGET, 10, "best2_drop_budget, image draw seed 1", 1),
    "best2_drop_budget_s2": (DROP_BUDGET, 10, "best2_drop_budget, image draw seed 2", 2),
    # run with --threads 2 on an otherwise idle machine: the compression's wall time against the 10-min target
    "best2_budget_macs_2t": (BUDGET_MACS, 10, "best2_budget_macs run alone with 2 threads: wall time of the recipe"),
    "best2_budget_macs_lr02": (BUDGET_MACS.replace("steps=4000", "steps=4000,lr=0.02"), 10,
                               "best2_budget_macs with peak lr 0.02 (default 0.01)"),
    # round 8 (2026-12-04): the peak lr trend (0.03 < 0.02 < 0.01) continued down, and bigger batches at equal compute
    "best2_budget_macs_lr005": (BUDGET_MACS.replace("steps=4000", "steps=4000,lr=0.005"), 10,
                                "best2_budget_macs with peak lr 0.005 (default 0.01)"),
    "best2_budget_macs_b128": (BUDGET_MACS.replace("steps=4000", "steps=2000,batch_size=128"), 10,
                               "best2_budget_macs with batch 128 for 2000 steps (the same images seen)"),
    "best2_budget_macs_f20_s1": (BUDGET_F20, 10, "best2_budget_macs_f20, image draw seed 1", 1),
    "best2_budget_macs_f20_s2": (BUDGET_F20, 10, "best2_budget_macs_f20, image draw seed 2", 2),
    "best2_budget_macs_f20_mse": (BUDGET_F20.replace("steps=4000", "steps=4000,loss=mse"), 10,
                                  "best2_budget_macs_f20 with the logits' MSE instead of the KL (Kim et al. 2021)"),
    "best2_budget_macs_f20_adam": (BUDGET_F20.replace("steps=4000", "steps=4000,optimizer=adam,lr=0.001"), 10,
                                   "best2_budget_macs_f20 with Adam at peak lr 0.001 instead of SGD at 0.01"),
    # round 9 (2026-12-05): the block-output MSE weight trend (10 < 20) continued up
    **_on_three_draws("best2_budget_macs_f40", BUDGET_F40,
                      "best2_budget_macs with block-output MSE weight 40 (default 10)"),
    **_on_three_draws("best2_budget_macs_f40_iter", BUDGET_F40_ITER, "best2_budget_macs_f40 reached in two pruning steps"),
    # round 11 (2026-12-07): more, smaller updates over the same number of views; train-mode BatchNorm; synthetic images
    **_on_three_draws("best2_budget_macs_f40_b32", BUDGET_F40_B32,
                      "best2_budget_macs_f40 at batch 32 x 8000 steps (same views)"),
    **_on_three_draws("best2_budget_macs_f40_bntrain", BUDGET_F40_BNTRAIN, "best2_budget_macs_f40 with BatchNorm in "
                      "training mode while function matching, statistics re-estimated after"),
    **_on_three_draws("best2_budget_macs_f40_synth", f"{SYNTH},{BUDGET_F40}", "best2_budget_macs_f40 + 256 synthetic "
                      "images (BN-statistics inversion) beside the real ones"),
    # round 12 (2026-12-07): L2-SP towards the pruned, recalibrated student's weights
    **_on_three_draws("best2_budget_macs_f40_l2sp001", BUDGET_F40_L2SP["0.01"], "best2_budget_macs_f40 with the "
                      "weights pulled towards their start (L2-SP, anchor=0.01)"),
    **_on_three_draws("best2_budget_macs_f40_l2sp01", BUDGET_F40_L2SP["0.1"], "best2_budget_macs_f40 with the "
                      "weights pulled towards their start (L2-SP, anchor=0.1)"),
    **_on_three_draws("best2_budget_macs_f40_adv003", BUDGET_F40_ADV["0.03"], "best2_budget_macs_f40 with half of "
                      "each batch adversarial (one signed-gradient step of 0.03 x the input std up the KD loss)"),
    **_on_three_draws("best2_budget_macs_f40_adv01", BUDGET_F40_ADV["0.1"], "best2_budget_macs_f40 with half of "
                      "each batch adversarial (one signed-gradient step of 0.1 x the input std up the KD loss)"),
    # round 13 (2026-12-07): a better target from the same teacher: its mean over each view and the view mirrored
    **_on_three_draws("best2_budget_macs_f40_tta", BUDGET_F40_TTA["flip"], "best2_budget_macs_f40 with the teacher's "
                      "mean over each view and its mirror image as the target (logits and block outputs)"),
    **_on_three_draws("best2_budget_macs_f40_ttalogits", BUDGET_F40_TTA["flip_logits"], "best2_budget_macs_f40 with "
                      "the teacher's mean over each view and its mirror image as the logits' target"),
    **_on_three_draws("best2_budget_macs_f40_recal", BUDGET_F40_RECAL, "best2_budget_macs_f40 with the widths chosen "
                      "by the candidates' errors after BatchNorm re-estimation (budget recal=true)"),
    # round 14 (2026-12-08): the accuracy-vs-K curve redone with the current recipe (block-output MSE weight 40)
    "best2_budget_macs_f40_k5": (BUDGET_F40, 5, "accuracy vs K, best recipe (weight 40)"),
    "best2_budget_macs_f40_k1": (BUDGET_F40, 1, "accuracy vs K, best recipe (weight 40)"),
    "best2_budget_macs_f40_datafree": (f"{SYNTH},{BUDGET_F40}", 0, "best recipe (weight 40), synthetic images only"),
    "best2_budget_macs_f80": (BUDGET_MACS.replace("features=10", "features=80"), 10,
                              "best2_budget_macs with block-output MSE weight 80 (default 10)"),
    "best2_budget_macs_synth": (f"{SYNTH},{BUDGET_MACS}", 10, "best2_budget_macs + 256 synthetic images beside the real ones"),
    "best2_budget_macs_f20": (BUDGET_F20, 10,
                              "best2_budget_macs with block-output MSE weight 20 (default 10)"),
    # the accuracy-vs-K curve of the best recipe (budget_macs): K = 5, 1 and data-free (synthetic images only)
    "best2_budget_macs_k5": (BUDGET_MACS, 5, "accuracy vs K, best recipe"),
    "best2_budget_macs_k1": (BUDGET_MACS, 1, "accuracy vs K, best recipe"),
    "best2_budget_macs_datafree": (f"{SYNTH},{BUDGET_MACS}", 0, "best recipe, synthetic images only"),
    "patient": ("prune(macs=0.5,coupled=false),distill(steps=5000,features=0),fold", 10,
                "longer function matching (5000 steps): does patience pay?"),
    "abl_nostage2": ("prune(macs=0.5,coupled=false),distill(steps=0,features=0),fold", 10, "ablation: layer-wise stage only"),
    "pq": ("pq(sub_dim=2,k=8,ec_iters=4)", 10, "pq with codeword fine-tune"),
    "pq_feat10": ("pq(sub_dim=2,k=8,ec_iters=4,features=10)", 10, "pq, codeword fine-tune with block-output MSE weight 10"),
    # round 8: codewords per layer by measured sensitivity under a 15x budget (k=8 everywhere is 17.5x)
    "pq_feat10_r8": ("pq(sub_dim=2,k=8,ec_iters=4,features=10)", 10,
                     "pq_feat10 re-run with k-means seeded per layer (the baseline for pq_alloc15)"),
    "pq_alloc15": ("pq(sub_dim=2,k=8,ec_iters=4,features=10,target_ratio=15)", 10,
                   "pq_feat10 with 8/16/32 codewords per layer by measured sensitivity, conv+linear >= 15x smaller"),
    "pq_noft_r8": ("pq(sub_dim=2,k=8,ec_iters=4,steps=0)", 10, "pq_noft re-run with k-means seeded per layer"),
    "pq_alloc15_noft": ("pq(sub_dim=2,k=8,ec_iters=4,steps=0,target_ratio=15)", 10,
                        "pq_alloc15 without the codeword fine-tune"),
    "pq_alloc15_k4_noft": ("pq(sub_dim=2,k=4,ec_iters=4,steps=0,target_ratio=15,k_max=32)", 10,
                           "pq_alloc15_noft starting from 4 codewords (4 to 32 per layer)"),
    "pq_alloc15_k2_noft": ("pq(sub_dim=2,k=2,ec_iters=4,steps=0,target_ratio=15,k_max=32)", 10,
                           "pq_alloc15_noft starting from 2 codewords (2 to 32 per layer)"),
    "pq_alloc15_k4m64_noft": ("pq(sub_dim=2,k=4,ec_iters=4,steps=0,target_ratio=15,k_max=64)", 10,
                              "pq_alloc15_noft with 4 to 64 codewords per layer"),
    "pq_alloc15_k4": ("pq(sub_dim=2,k=4,ec_iters=4,features=10,target_ratio=15,k_max=32)", 10,
                      "pq_alloc15 starting from 4 codewords (4 to 32 per layer), with the codeword fine-tune"),
    "pq_alloc15_k4_s1": ("pq(sub_dim=2,k=4,ec_iters=4,features=10,target_ratio=15,k_max=32)", 10,
                         "pq_alloc15_k4, image draw seed 1", 1),
    "pq_alloc15_k4_s2": ("pq(sub_dim=2,k=4,ec_iters=4,features=10,target_ratio=15,k_max=32)", 10,
                         "pq_alloc15_k4, image draw seed 2", 2),
    # round 9: the codeword fine-tune with block-output MSE weight 40 (as distill's round-9 rows)
    **_on_three_draws("pq_alloc15_k4_f40", PQ15_F40, "pq_alloc15_k4 with block-output MSE weight 40"),
    **_on_three_draws("pq_alloc15_k4_f40_3k", PQ15_F40_3K,
                      "pq_alloc15_k4_f40 with 3000 codeword fine-tune steps (default 1000)"),
    "pq_noft": ("pq(sub_dim=2,k=8,ec_iters=4,steps=0)", 10, "pq, error correction only"),
    "int8": ("int8", 10, "ONNX Runtime static int8"),
}


def _pin_bnrecal_off(recipe):
    """distill's BN recalibration became a (guarded) default on 2026-12-02; the rows run before then say it was off."""
    if "distill" not in recipe or "bnrecal=" in recipe:
        return recipe
    recipe = recipe.replace("distill(", "distill(bnrecal=false,")
    return re.sub(r"distill(?=,|$)", "distill(bnrecal=false)", recipe)


ROWS = {name: (_pin_bnrecal_off(row[0]), *row[1:]) for name, row in ROWS.items()}
# rows cmd_run builds by their own functions, not from ROWS
SPECIAL_ROWS = ("tp", "tp_feat", "tp_best2", "r56_timing", "lowrank")
LOWRANK = ("lowrank", "lowrank(budget=0.01)", "lowrank(budget=0.1)", "lowrank(budget=0.3)", "lowrank(budget=1.0)",
           "lowrank(tradeoff=0.7)", "lowrank(tradeoff=0.8)", "lowrank(tradeoff=0.9)", "lowrank(tradeoff=1.0)")


def load_npz(path):
    d = np.load(path)
    x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.from_numpy(d["y"].astype(np.int64))


def splits(train_path, k, seed=0, n_val=100):
    """(few-shot (X, Y) with k per class, validation (X, Y)): disjoint, seeded, class-balanced."""
    from slimkit.data import few_shot_indices

    x, y = load_npz(train_path)
    rng = np.random.default_rng(1234)
    val = np.concatenate([rng.permutation(np.flatnonzero(y.numpy() == c))[:n_val] for c in range(10)])
    rest = np.setdiff1d(np.arange(len(y)), val)
    few = rest[few_shot_indices(y[rest], k, seed).numpy()] if k > 0 else np.array([], dtype=np.int64)
    return (x[few], y[few]), (x[val], y[val])


@torch.no_grad()
def top1(model, data, bs=250):
    x, y = data
    if hasattr(model, "eval"):
        model.eval()
    return 100.0 * sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(x), bs)) / len(y)


def teacher(checkpoint):
    from slimkit.models import create_model

    return create_model("resnet20", checkpoint=checkpoint).eval()


def conv_linear_bytes(model):
    from bench_resnet20 import conv_linear_weight_bytes  # same count as the older benchmark

    return conv_linear_weight_bytes(model)


def env():
    from slimkit.compress.int8 import needs_reduce_range

    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.machine())
    return dict(torch=torch.__version__, cpu=f"{cpu}, {'no VNNI' if needs_reduce_range() else 'VNNI'}",
                cores=os.cpu_count(), threads=torch.get_num_threads(), loadavg=os.getloadavg())


def _save(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def ort_target_ms(base, x1, speedup=SPEEDUP):
    """The checkpoint's ONNX Runtime batch-1 median (middle of 5 runs, torch's thread count) / ``speedup``."""
    from slimkit.compress.budget import _latency_ms
    from slimkit.model_io import Example

    return sorted(_latency_ms(base, Example.of((x1,)), "onnxruntime") for _ in range(5))[2] / speedup


def run_row(name, recipe, k, args, base, test, log, seed=0):
    from slimkit.compress import compress
    from slimkit.profile.counting import count_macs

    few, val = splits(args.train, k, seed)
    x1 = test[0][:1]
    if "{ms}" in recipe:
        recipe = recipe.replace("{ms}", f"{ort_target_ms(base, x1):.3f}")
    t0, c0 = time.time(), time.process_time()
    res = compress(base, x1, recipe, data=(few[0], few[1]) if k > 0 else None, progress=False, latency_batches=())
    wall, cpu = time.time() - t0, time.process_time() - c0
    m = res.model
    from slimkit.compress.int8 import OrtModule

    macs = count_macs(base, (x1,)) if isinstance(m, OrtModule) else count_macs(m, (x1,))
    row = dict(name=name, recipe=recipe, k=k, test=top1(m, test), val=top1(m, val), macs=int(macs),
               conv_linear_bytes=None if isinstance(m, OrtModule) else conv_linear_bytes(m),
               wall_s=round(wall, 1), cpu_s=round(cpu, 1), loadavg=os.getloadavg(),
               passes=[(r.name, round(r.seconds, 1)) for r in res.report.passes], note=ROWS.get(name, ("", 0, ""))[2],
               seed=seed, cpu=env()["cpu"])
    row["targets"] = [p.target for p in res.report.passes if p.target]
    if not isinstance(m, OrtModule):
        row["structure"] = dict(dropped=getattr(m, "dropped_blocks", []),  # what a structure search picked
                                widths=[c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)])
        torch.save(m, os.path.join(args.models, f"{name}.pt"))
    log(f"{name}: test {row['test']:.2f} val {row['val']:.2f} MACs {macs / 1e6:.2f}M wall {wall:.0f}s cpu {cpu:.0f}s")
    return row


def torch_pruning_row(args, base, test, log, steps, features=0.0, name="tp", bnrecal=False):
    """Torch-Pruning 1.6 (L1 magnitude, block-internal channels only: the zero-pad shortcut is invisible to its
    tracer) to the same MAC target, then the SAME function-matching fine-tune on the same images."""
    import torch_pruning as tp

    from slimkit.compress.base import CompressContext
    from slimkit.compress.distill import DistillConfig, distill
    from slimkit.profile.counting import count_macs

    few, val = splits(args.train, 10)
    x1 = test[0][:1]
    t0, c0 = time.time(), time.process_time()
    m = copy.deepcopy(base)
    macs0 = count_macs(base, (x1,))
    ignored = [mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)
               or (isinstance(mod, torch.nn.Conv2d) and not n.endswith(".conv1"))]
    pruner = tp.pruner.MagnitudePruner(m, x1, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.9,
                                       iterative_steps=90, ignored_layers=ignored)
    for _ in range(90):
        pruner.step()
        if count_macs(m, (x1,)) <= 0.5 * macs0:
            break
    ctx = CompressContext(teacher=base, data=few, progress=False, extras={"reference": base})
    m = distill(m.eval(), x1, DistillConfig(method="finetune", steps=steps, features=features, feature_at="blocks",
                                                     bnrecal=bnrecal), ctx)
    wall, cpu = time.time() - t0, time.process_time() - c0
    torch.save(m, os.path.join(args.models, f"{name}.pt"))
    ft = (f",features={features:g},feature_at=blocks" if features else "") + (",bnrecal=true" if bnrecal else "")
    row = dict(name=name, recipe=f"Torch-Pruning {tp.__version__} MagnitudePruner(L1, block-internal) + "
               f"distill(method=finetune,steps={steps}{ft})", k=10, test=top1(m, test), val=top1(m, val),
               macs=int(count_macs(m, (x1,))), conv_linear_bytes=conv_linear_bytes(m), wall_s=round(wall, 1),
               cpu_s=round(cpu, 1), loadavg=os.getloadavg(), note="same MAC target, same fine-tune, same images",
               cpu=env()["cpu"])
    log(f"{name}: test {row['test']:.2f} val {row['val']:.2f}")
    return row


def resnet56_timing_row(args, log):
    """Wall/CPU time of the default recipe on a CIFAR ResNet-56 (the issue's "under 25 min" row). No pretrained
    ResNet-56 ships here, so the weights are random (seeded) with BatchNorm statistics re-estimated on 2,000 train
    images so activations have realistic scale; the accuracy of this row means nothing and is not reported."""
    from slimkit.compress import compress
    from slimkit.compress.bnrecal import recalibrate
    from slimkit.models import create_model
    from slimkit.profile.counting import count_macs

    torch.manual_seed(0)
    m0 = create_model("resnet56").eval()
    x, _ = load_npz(args.train)
    recalibrate(m0, x[torch.randperm(len(x))[:2000]], passes=1)
    few, _ = splits(args.train, 10)
    x1 = few[0][:1]
    t0, c0 = time.time(), time.process_time()
    res = compress(m0, x1, BEST, data=few, progress=False, latency_batches=())
    wall, cpu = time.time() - t0, time.process_time() - c0
    row = dict(name="r56_timing", recipe=BEST, k=10, test=None, val=None, macs=int(count_macs(res.model, (x1,))),
               macs0=int(count_macs(m0, (x1,))), wall_s=round(wall, 1), cpu_s=round(cpu, 1), loadavg=os.getloadavg(),
               threads=torch.get_num_threads(), passes=[(r.name, round(r.seconds, 1)) for r in res.report.passes],
               note="ResNet-56, random weights (timing only)")
    log(f"r56_timing: MACs {row['macs0'] / row['macs']:.2f}x fewer, wall {wall:.0f}s cpu {cpu:.0f}s")
    return row


def cmd_run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.makedirs(args.models, exist_ok=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    results = json.load(open(args.results)) if os.path.exists(args.results) else {"rows": {}}
    t_start = time.time()
    log = lambda s: print(f"[{time.time() - t_start:7.1f}s] {s}", flush=True)  # noqa: E731
    base = teacher(args.checkpoint)
    test = load_npz(args.test)
    if "baseline" not in results["rows"]:
        _, val = splits(args.train, 1)
        results["rows"]["baseline"] = dict(name="baseline", recipe="pretrained checkpoint", test=top1(base, test),
                                           val=top1(base, val), macs=int(__import__("slimkit.profile.counting", fromlist=["x"])
                                                                       .count_macs(base, (test[0][:1],))),
                                           conv_linear_bytes=conv_linear_bytes(base))
        _save(args.results, results)
    wanted = args.rows.split(",") if args.rows else list(ROWS) + ["tp", "lowrank"]
    for name in wanted:
        if name in results["rows"] and not args.redo:
            continue
        if name == "r56_timing":
            results["rows"][name] = resnet56_timing_row(args, log)
        elif name == "tp":
            results["rows"]["tp"] = torch_pruning_row(args, base, test, log, args.tp_steps)
        elif name == "tp_feat":  # the same fine-tune as BEST's distill stage 2
            results["rows"][name] = torch_pruning_row(args, base, test, log, args.tp_steps, 10.0, name)
        elif name == "tp_best2":  # the same fine-tune as BEST2's
            results["rows"][name] = torch_pruning_row(args, base, test, log, 4000, 10.0, name, bnrecal=True)
        elif name == "lowrank":
            for recipe in LOWRANK:
                key = "lowrank:" + recipe
                if key not in results["rows"] or args.redo:
                    results["rows"][key] = run_row(key, recipe, 0, args, base, test, log)
                    _save(args.results, results)
        else:
            recipe, k, _, *seed = ROWS[name]
            results["rows"][name] = run_row(name, recipe, k, args, base, test, log, *seed)
        results["env"] = env()
        _save(args.results, results)
    return 0


def cmd_latency(args):
    """Interleaved latency of the saved models vs the checkpoint: eager (BatchNorm folded where the recipe did)
    and ONNX Runtime, batch 1 and 64. Run it with the machine otherwise idle (pause other jobs)."""
    from slimkit.compress import compress
    from slimkit.compress._latency import interleaved_latency
    from slimkit.compress.int8 import OrtModule

    torch.set_num_threads(args.threads)
    results = json.load(open(args.results))
    base = teacher(args.checkpoint)
    test = load_npz(args.test)
    names = [n for n in args.latency_rows.split(",") if os.path.exists(os.path.join(args.models, f"{n}.pt"))]
    eager = {"baseline": base, "baseline+fold": compress(base, test[0][:1], "fold", progress=False,
                                                         latency_batches=()).model}
    for n in names:
        eager[n] = torch.load(os.path.join(args.models, f"{n}.pt"), weights_only=False).eval()
    ort = {n: OrtModule.from_torch(m, (test[0][:1],), threads=args.threads) for n, m in eager.items()
           if n != "baseline+fold"}
    # int8 is an ONNX Runtime model: timed against ORT fp32 in the same interleaved group
    few, _ = splits(args.train, 10)
    ort["int8"] = compress(base, test[0][:1], f"int8(threads={args.threads})", data=few, progress=False,
                           latency_batches=()).model
    lat = {}
    for b in (1, 64):
        xb = (test[0][:b],)
        for kind, group in (("eager", eager), ("ort", ort)):
            for n, t in interleaved_latency(group, xb, repeats=args.repeats, warmup=3).items():
                lat[f"{kind}:{n}@b{b}"] = t
                print(kind, n, b, f"{t['median_ms']:.3f} ms", flush=True)
    results["latency"] = lat
    results["latency_env"] = env()
    _save(args.results, results)
    return 0


def _speed(lat, kind, name, b):
    t, ref = lat.get(f"{kind}:{name}@b{b}"), lat.get(f"{kind}:baseline@b{b}")
    if not t or not ref:
        return "-"
    return (f"{ref['median_ms'] / t['median_ms']:.2f}x ({t['median_ms']:.2f} ms "
            f"[{t['p25_ms']:.2f}, {t['p75_ms']:.2f}])")


def cmd_report(args):
    from slimkit._io import write_text

    results = json.load(open(args.results))
    rows, lat, e = results["rows"], results.get("latency", {}), results.get("env", {})
    base = rows["baseline"]
    lines = ["# Few-shot compression of the pretrained CIFAR-10 ResNet-20 (issue 16)", "",
             f"torch {e.get('torch')}, {e.get('cores')} cores, {e.get('threads')} torch thread(s), on the CPU in a row's "
             "note (rows without one: Intel(R) Xeon(R) Processor, VNNI), shared machine (load average per row in fewshot.json). Top-1 on cifar10_test_dev.npz (5,000 real test "
             "images); val = the seeded class-balanced validation split of cifar10_train.npz (the only split "
             "anything was tuned on; the checkpoint was trained on it, hence ~99.8%). K images per class, seed 0.",
             "", "| row | recipe | K | test top-1 % | drop (pt) | val % | MACs | time (wall / CPU s) | note |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for name, r in rows.items():
        macs = f"{base['macs'] / r['macs']:.2f}x fewer" if r.get("macs") else "-"
        size = ""
        if r.get("conv_linear_bytes") and r["conv_linear_bytes"] != base["conv_linear_bytes"] and name.startswith("pq"):
            size = f"; conv+linear weights {base['conv_linear_bytes'] / r['conv_linear_bytes']:.1f}x smaller"
        tm = f"{r['wall_s']:.0f} / {r['cpu_s']:.0f}" if "wall_s" in r else "-"
        if r.get("macs0"):  # a row on another model (timing only)
            macs = f"{r['macs0'] / r['macs']:.2f}x fewer"
        acc = (f"{r['test']:.2f} | {base['test'] - r['test']:+.2f} | {r['val']:.1f}" if r.get("test") is not None
               else "- | - | -")
        cpu = f" [{r['cpu']}]" if r.get("cpu") else ""
        lines.append(f"| {name} | `{r['recipe']}` | {r.get('k', '-')} | {acc} | {macs} | {tm} | {r.get('note', '')}{size}{cpu} |")
    if lat:
        le = results.get("latency_env", {})
        lines += ["", f"## Latency (interleaved; speed-up vs the checkpoint, median ms [p25, p75]; {le.get('cpu', '?')}, "
                  f"{le.get('threads', '?')} threads, torch {le.get('torch', '?')}; load average at end "
                  f"{'/'.join(f'{x:.2f}' for x in le.get('loadavg', ()))})", "",
                  "| model | eager b1 | eager b64 | ORT b1 | ORT b64 |", "|---|---|---|---|---|"]
        names = sorted({k.split(":", 1)[1].rsplit("@", 1)[0] for k in lat})
        for n in names:
            lines.append(f"| {n} | {_speed(lat, 'eager', n, 1)} | {_speed(lat, 'eager', n, 64)} | "
                         f"{_speed(lat, 'ort', n, 1)} | {_speed(lat, 'ort', n, 64)} |")
    text = "\n".join(lines) + "\n"
    write_text(args.markdown, text)
    print(text)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("run", "latency", "report"))
    ap.add_argument("--train", default="../shared/data/cifar10_train.npz")
    ap.add_argument("--test", default="../shared/data/cifar10_test_dev.npz")
    ap.add_argument("--checkpoint", default="../shared/data/resnet20_cifar10.th")
    ap.add_argument("--rows", default="", help=f"comma list of {','.join((*ROWS, *SPECIAL_ROWS))} "
                    "(default: all)")
    ap.add_argument("--redo", action="store_true", help="recompute rows already in the results")
    ap.add_argument("--results", default="benchmarks/results/compress/fewshot.json")
    ap.add_argument("--markdown", default="benchmarks/results/compress/fewshot.md")
    ap.add_argument("--models", default="/tmp/slimkit_fewshot_models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tp-steps", type=int, default=1500, help="fine-tune steps of the Torch-Pruning row (= distill's)")
    ap.add_argument("--latency-rows", default="main,plain,abl_drop,tp,pq")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    unknown = [n for n in filter(None, args.rows.split(",")) if n not in ROWS and n not in SPECIAL_ROWS]
    if args.step == "run" and unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; see ROWS in {os.path.basename(__file__)}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return {"run": cmd_run, "latency": cmd_latency, "report": cmd_report}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
