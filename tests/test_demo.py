from regode.demo import run_demo


def test_demo_undoes_the_known_motion(tmp_path):
    results = run_demo(tmp_path, seed=1)
    assert results["dice_moved"] < 60  # the motion is visible
    assert results["dice_restored"] > 95  # and the inverse files undo it
    assert results["rmse_restored"] < results["rmse_moved"] / 3
    assert (tmp_path / "motion0GenericAffine.mat").exists() and (tmp_path / "motion1InverseWarp.nii.gz").exists()
