import pytest
from absl import flags

from tfface.train.config import TrainConfig
from tfface.train.flags import config_from_flags, define_flags


def parse(args):
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["prog", *args])
    return config_from_flags(fv)


def test_defaults_round_trip_into_config(tmp_path):
    cfg = parse([f"--workdir={tmp_path}"])
    assert cfg == TrainConfig(workdir=str(tmp_path)).validate()
    assert cfg.data_dir == str(tmp_path / "data")  # synthetic data lives in the run by default


def test_lists_are_parsed(tmp_path):
    cfg = parse([f"--workdir={tmp_path}", "--input_size=64,48", "--lr_step_epochs=3,7,9"])
    assert cfg.input_size == (64, 48)
    assert cfg.lr_step_epochs == (3, 7, 9)


def test_flagfile_is_read(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text(f"# comment\n--workdir={tmp_path}/w\n--batch_size=32\n--margin_m=0.3\n")
    cfg = parse([f"--flagfile={flagfile}"])
    assert (cfg.batch_size, cfg.margin_m, cfg.workdir) == (32, 0.3, f"{tmp_path}/w")


@pytest.mark.parametrize("args, flag", [
    (["--batch_size=1"], "batch_size"),
    (["--input_size=a,b"], "input_size"),
    (["--optimizer=rmsprop"], "optimizer"),
    (["--lr=-1"], "lr"),
])
def test_malformed_values_fail_at_parse_naming_the_flag(tmp_path, args, flag):
    with pytest.raises(flags.Error, match=flag):
        parse([f"--workdir={tmp_path}", *args])


@pytest.mark.parametrize("args, flag", [
    (["--input_size=100,20"], "input_size"),
    (["--lr_step_epochs=5,3"], "lr_step_epochs"),
    (["--warmup_epochs=30", "--epochs=20"], "warmup_epochs"),
    (["--dataset=folder"], "data_dir"),
    (["--dataset=folder", "--data_dir=/does/not/exist"], "data_dir"),
])
def test_inconsistent_values_fail_before_work_naming_the_flag(tmp_path, args, flag):
    with pytest.raises(ValueError, match=f"--{flag}="):
        parse([f"--workdir={tmp_path}", *args])


def test_workdir_is_required():
    with pytest.raises(flags.Error, match="workdir"):
        parse([])


@pytest.mark.parametrize("backbone,input_size,expected", [
    ("iresnet100", "112,112", ("iresnet18", (48, 48), 1.0)),  # the family's cheapest member
    ("sphere64", "112,96", ("sphere4", (48, 40), 1.0)),
    ("inception_resnet_v1", "160,160", ("inception_resnet_v1", (80, 80), 1.0)),  # >= its 75-pixel minimum
    ("mobilefacenet", "112,112", ("mobilefacenet", (48, 48), 0.25)),  # width-scalable
])
def test_smoke_shrinks_backbone_and_input(tmp_path, backbone, input_size, expected):
    cfg = parse([f"--workdir={tmp_path}", f"--backbone={backbone}", f"--input_size={input_size}", "--smoke"])
    assert (cfg.backbone, cfg.input_size, cfg.width_multiplier) == expected
    assert cfg.steps_per_epoch == 2 and cfg.dataset == "synthetic"
