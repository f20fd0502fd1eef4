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


def test_the_report_shows_the_photo_size_rows_with_the_baseline():
    from eva_helpers.demo import photo_size_lines

    photo = {"photo_size": 256, "n_images": 256, "run": "joint-unet_small", "refined_mask_iou": 0.971,
             "refined_boundary_iou": 0.83, "upsampled_mask_iou": 0.905, "upsampled_boundary_iou": 0.55,
             "baseline_mask_iou": 0.94, "baseline_boundary_iou": 0.667, "baseline_threshold": 0.04}
    text = "\n".join(photo_size_lines(photo))
    assert "## On photos 4x the model's size" in text and "built at 256 px" in text
    assert "| 0.971 | 0.830 |" in text and "| 0.905 | 0.550 |" in text
    assert "bg-difference baseline (threshold 0.04) | 0.940 | 0.667 |" in text
    assert photo_size_lines(None) == []
