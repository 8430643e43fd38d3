"""`tfface-train --flagfile=pipelines/demo.flags`: parse flags, then hand a TrainConfig to the Trainer."""

from __future__ import annotations

from absl import app

from tfface.cli import run_app
from tfface.train.flags import config_from_flags, define_flags

define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_from_flags()
    except ValueError as err:  # cross-field rules; the message names the flag
        raise app.UsageError(str(err)) from err
    from tfface.train.trainer import Trainer  # heavy import only after the flags are known good

    Trainer(cfg).fit()


def run():
    run_app(main, __name__, "tfface.train.flags")


if __name__ == "__main__":
    run()
