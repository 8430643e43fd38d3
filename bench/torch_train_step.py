"""Reference benchmark: images/s of the same networks trained in PyTorch on this machine.

    python bench/torch_train_step.py --backbone=iresnet18
    python bench/torch_train_step.py --backbone=mbf

The networks are ``tests/torch_reference.py``'s arcface_torch-order IResNet and MobileFaceNet ("mbf"),
which ``tests/test_convert.py`` proves equal to tfface's ``iresnet18`` / ``mbf`` (same weights -> same
embeddings), so this and ``bench/train_step.py`` time the same arithmetic. The step matches
``bench/train_step.py``: backbone + embedding head + ArcFace (s=64, m=0.5) over 1,000 classes, cross-entropy,
backward, SGD (momentum 0.9, weight decay 5e-4), batch 64 at 112x112, on one fixed in-memory batch.
Needs torch (the ``[torch-test]`` extra). Prints one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("backbone", "iresnet18", ["iresnet18", "iresnet50", "mbf"], "Network.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("num_classes", 1000, "Classes of the ArcFace head.")
flags.DEFINE_integer("warmup_steps", 2, "Steps not timed.")
flags.DEFINE_integer("steps", 5, "Timed steps.")
flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: torch's default, one per core).")


def main(argv):
    del argv
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import torch
    import torch.nn.functional as F
    from torch_reference import TorchIResNet, TorchMobileFaceNet

    if FLAGS.threads:
        torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(0)
    if FLAGS.backbone == "mbf":
        net = TorchMobileFaceNet(512)
    else:
        net = TorchIResNet({"iresnet18": (2, 2, 2, 2), "iresnet50": (3, 4, 14, 3)}[FLAGS.backbone])
    weight = torch.nn.Parameter(torch.randn(FLAGS.num_classes, 512) * 0.01)
    params = list(net.parameters()) + [weight]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(FLAGS.batch_size, 3, 112, 112) * 2 - 1
    labels = torch.randint(0, FLAGS.num_classes, (FLAGS.batch_size,))
    s, m = 64.0, 0.5
    net.train()

    def step():
        cos = F.linear(F.normalize(net(images)), F.normalize(weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + m)
        logits = s * cos.scatter(1, labels[:, None], target)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    for _ in range(FLAGS.warmup_steps):
        step()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        loss = step()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "torch_train_step", "backbone": FLAGS.backbone, "input_size": [112, 112],
        "batch_size": FLAGS.batch_size, "num_classes": FLAGS.num_classes,
        "params": int(sum(p.numel() for p in net.parameters())),
        "steps": FLAGS.steps, "step_ms": round(1000 * seconds / FLAGS.steps, 1),
        "images_per_second": round(FLAGS.batch_size * FLAGS.steps / seconds, 2),
        "last_loss": round(loss, 4) if math.isfinite(loss) else None,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    app.run(main)
