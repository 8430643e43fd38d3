"""Thin command-line entry points; all logic lives in the library.

Helpers shared by several entry points live here (TensorFlow-free, so flag errors come back fast).
"""

from __future__ import annotations


def parse_image_size(text: str, minimum: int = 1) -> tuple[int, int]:
    """``'112,96'`` -> ``(112, 96)``; ``'112'`` -> ``(112, 112)``. ValueError on anything else or below `minimum`."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected 'height,width' (or one number), got {text!r}")
    size = (int(parts[0]), int(parts[1]))
    if min(size) < minimum:
        raise ValueError(f"height and width must be >= {minimum}, got {text!r}")
    return size


def is_image_size(text, minimum: int = 1) -> bool:
    """Whether :func:`parse_image_size` accepts ``text`` (for absl flag validators)."""
    try:
        parse_image_size(text, minimum)
    except ValueError:
        return False
    return True


def run_app(main, module_name: str, *flag_modules: str) -> None:
    """``absl.app.run(main)`` for the module ``module_name``, with a working ``--help`` under a console script.

    A console script's ``__main__`` is pip's generated wrapper: absl takes the usage text from ``__main__``'s
    docstring and lists only the flags of the module named ``sys.argv[0]``, so ``tfface-align --help`` would
    print neither the usage nor a single flag. This hands both over to the wrapper first, together with the
    flags of ``flag_modules`` (modules that define the entry point's flags on its behalf).
    """
    import sys

    from absl import app, flags

    module, main_module = sys.modules[module_name], sys.modules["__main__"]
    if main_module is not module and not main_module.__doc__:
        main_module.__doc__ = module.__doc__
    for name in (module_name, *flag_modules):
        for flag in flags.FLAGS.get_key_flags_for_module(name):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
