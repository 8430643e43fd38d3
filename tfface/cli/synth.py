"""tfface-synth: render a synthetic face-recognition dataset (train/, heldout/, pairs.txt, landmarks.csv).

Example::

    tfface-synth --out_dir=/tmp/synth --num_train_identities=500 --num_heldout_identities=100 \\
        --images_per_identity=20 --image_size=112,112

An existing dataset generated with the same arguments is reused (``--force`` regenerates it). All logic
lives in :mod:`tfface.data.synthetic`; this module only parses and validates flags.
"""

from absl import app, flags, logging

from tfface.cli import is_image_size, parse_image_size, run_app

FLAGS = flags.FLAGS

flags.DEFINE_string("out_dir", None, "Destination folder of the dataset.")
flags.DEFINE_integer("num_train_identities", 500, "Identities under train/ (ImageFolder layout).")
flags.DEFINE_integer("num_heldout_identities", 100, "Held-out identities under heldout/ (>= 2), used by pairs.txt.")
flags.DEFINE_integer("images_per_identity", 20, "Images per identity (>= 2).")
flags.DEFINE_string("image_size", "112,112", "Output size 'height,width' (or one number for square), each >= 16.")
flags.DEFINE_integer("seed", 0, "Random seed (>= 0); the output is a pure function of all arguments.")
flags.DEFINE_float("difficulty", 1.0, "Nuisance amplitude: 0 = clean frontal faces, 1 = default, >1 harder.")
flags.DEFINE_integer("n_folds", 10, "Folds in pairs.txt (LFW: 10).")
flags.DEFINE_integer("pairs_per_fold", None, "Matched (and mismatched) pairs per fold; default min(300, available).")
flags.DEFINE_integer("num_workers", None, "Worker processes; default: all CPU cores.")
flags.DEFINE_bool("force", False, "Regenerate even if out_dir already holds a dataset with these arguments.")



flags.mark_flag_as_required("out_dir")
flags.register_validator("out_dir", lambda v: v is None or bool(v.strip()), "--out_dir must not be empty")
flags.register_validator("image_size", lambda v: is_image_size(v, 16),
                         "--image_size must be 'height,width' (or one number), each >= 16")
for _name, _minimum in (("num_train_identities", 1), ("num_heldout_identities", 2), ("images_per_identity", 2),
                        ("seed", 0), ("n_folds", 1)):
    flags.register_validator(_name, lambda v, m=_minimum: v is not None and v >= m, f"--{_name} must be >= {_minimum}")
flags.register_validator("pairs_per_fold", lambda v: v is None or v >= 1, "--pairs_per_fold must be >= 1")
flags.register_validator("num_workers", lambda v: v is None or v >= 1, "--num_workers must be >= 1")
flags.register_validator("difficulty", lambda v: v is not None and 0 <= v < float("inf"),
                         "--difficulty must be a finite number >= 0")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    from tfface.data.synthetic import ensure_dataset, generate_dataset  # keeps --help fast

    kwargs = dict(num_train_identities=FLAGS.num_train_identities,
                  num_heldout_identities=FLAGS.num_heldout_identities,
                  images_per_identity=FLAGS.images_per_identity,
                  image_size=parse_image_size(FLAGS.image_size, minimum=16),
                  seed=FLAGS.seed, difficulty=FLAGS.difficulty, pairs_per_fold=FLAGS.pairs_per_fold,
                  n_folds=FLAGS.n_folds, num_workers=FLAGS.num_workers, progress=True)
    try:
        fn = generate_dataset if FLAGS.force else ensure_dataset
        manifest = fn(FLAGS.out_dir, **kwargs)
    except (ValueError, FileExistsError) as e:  # e.g. --pairs_per_fold larger than the folds can supply
        raise app.UsageError(str(e)) from None
    c = manifest["counts"]
    logging.info("tfface-synth: %s  train %d identities / %d images, heldout %d / %d, %d pairs in %d folds "
                 "(%d+%d per fold, identities disjoint across folds: %s)", FLAGS.out_dir, c["train_identities"],
                 c["train_images"], c["heldout_identities"], c["heldout_images"], c["pairs"],
                 manifest["arguments"]["n_folds"], manifest["pairs_per_fold"], manifest["pairs_per_fold"],
                 manifest["folds_disjoint"])


def run():
    """Console-script entry point (``tfface-synth``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
