from regode.demo import run_demo


def test_demo_runs_register_and_reports_against_the_truth(tmp_path):
    """The README's first command: the MNI152 brain, T1 against a T2-like contrast moved by a known
    rigid motion, goes through `register` (shipped rigid weights) and lands within 1 mm of the truth."""
    results = run_demo(tmp_path, seed=1)
    assert results["rmse_phi_before"] > 5 and results["dice_before"] < 60  # the motion is visible
    assert results["rmse_phi_after"] < 1.0 and results["dice_after"] > 90
    for name in (
        "demo_0GenericAffine.mat",
        "demo_Warped.nii.gz",
        "demo_WarpedLabels.nii.gz",
        "demo_qc.png",
        "demo_regode.json",
        "fixed.nii.gz",
        "moving.nii.gz",
    ):
        assert (tmp_path / name).exists()


def test_demo_takes_a_user_checkpoint_for_deformable_models(tmp_path):
    """`regode demo --model rigid+bspline --checkpoint B.pt` runs the hybrid with the user's model
    (here an untrained one) instead of the shipped one, and writes the warp."""
    from regode import checkpoint
    from regode.odenet.config import ModelConfig, TrainConfig
    from regode.odenet.model import MSODENet

    model = MSODENet(ModelConfig(kind="bspline"))
    checkpoint.save(tmp_path / "b.pt", "regode.msodenet", model, TrainConfig(model=model.config), 0, 0.0, [])
    results = run_demo(tmp_path / "out", seed=1, model="rigid+bspline", checkpoints=(str(tmp_path / "b.pt"),))
    assert (tmp_path / "out" / "demo_1Warp.nii.gz").exists() and results["rmse_phi_before"] > 5
