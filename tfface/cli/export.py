"""`tfface-export`: turn a training work directory's latest checkpoint into a versioned SavedModel."""

from __future__ import annotations

import os

from absl import app, flags

from tfface.cli import run_app

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training work directory (holds config.json and checkpoints/).")
flags.DEFINE_string("export_base", None, "Base directory of the export (default <workdir>/export).")
flags.DEFINE_string("model_name", None, "Model name in the layout (default: the run's --export_name).")
flags.DEFINE_integer("version", None, "Integer version (default: one more than the highest present).",
                     lower_bound=0)
flags.DEFINE_enum("weights", None, ["ema", "raw"],
                  "Which weights to export (default: the run's --export_weights if it kept an EMA, else raw).")
flags.DEFINE_string("thresholds", None, "A thresholds.json from `tfface-eval --calibrate_far` to ship in the "
                    "export's assets (the default threshold of verify()).")
flags.DEFINE_enum("flip_fusion", "none", ["none", "sum"],
                  "Flip-test fusion inside the SavedModel: 'sum' embeds each crop and its mirror and returns the "
                  "L2-normalised sum (in both signatures; recorded in assets/tfface.json).")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_path = os.path.join(FLAGS.workdir, "config.json")
    if not os.path.isfile(config_path):
        raise app.UsageError(f"--workdir={FLAGS.workdir}: no config.json (not a tfface-train work directory)")
    if FLAGS.thresholds:
        from tfface.eval.calibration import read_thresholds

        try:
            read_thresholds(FLAGS.thresholds)  # before the model is restored: a bad file fails fast
        except (OSError, ValueError) as e:
            raise app.UsageError(f"--thresholds: {e}") from e
    from tfface.train.workdir import export_from_workdir

    path = export_from_workdir(FLAGS.workdir, export_base=FLAGS.export_base, model_name=FLAGS.model_name,
                               version=FLAGS.version, weights=FLAGS.weights, thresholds=FLAGS.thresholds,
                               flip_fusion=FLAGS.flip_fusion)
    print(path)


def run():
    run_app(main, __name__)


if __name__ == "__main__":
    run()
