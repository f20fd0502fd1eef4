"""The demo report states, with numbers, by how much each model beats the free baselines, and shows both baseline rows."""
from eva_helpers.demo import margins, results_table

RESULTS = {
    "joint-unet_small": {"parameters": 1_075_174, "mask_iou": 0.931, "mask_dice": 0.96, "baseline_mask_iou": 0.841,
                         "baseline_mask_dice": 0.913, "baseline_threshold": 0.05, "depth_rmse": 0.035,
                         "depth_ssim": 0.94, "baseline_depth_rmse": 0.093, "baseline_depth_ssim": 0.65,
                         "baseline_depth_absrel": 0.08, "baseline_depth_delta1": 0.88},
    "mask-unet_small": {"parameters": 774_000, "mask_iou": 0.80, "baseline_mask_iou": 0.841},
}


def test_margins_give_the_signed_difference_and_the_verdict():
    lines = margins(RESULTS)
    assert len(lines) == 2
    assert "0.931 vs 0.841 (+0.090, beats the baseline)" in lines[0]
    assert "depth RMSE 0.035 vs 0.093 (38% of the baseline's)" in lines[0] and "SSIM 0.940 vs 0.650" in lines[0]
    assert "(−0.041, does not beat the baseline)" in lines[1] and "depth" not in lines[1]


def test_results_table_has_both_baseline_rows():
    table = results_table(RESULTS)
    assert "| bg-difference baseline (threshold 0.050, no learning) | 0 | 0.841 | 0.913 |" in table
    assert "mean-depth baseline" in table and "| 0.093 | 0.080 | 0.880 | 0.650 |" in table
