"""tfface.cli helpers, through the installed console scripts (what users type)."""

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("script, flag", [("tfface-align", "--fallback"), ("tfface-prepare", "--num_shards"),
                                          ("tfface-train", "--backbone"), ("tfface-synth", "--out_dir")])
def test_console_script_help_lists_usage_and_flags(script, flag):
    path = os.path.join(BIN, script)
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: install the package with `pip install -e .`")
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert script in text  # the module docstring (usage), not absl's bare "USAGE: <wrapper path>"
    assert flag in text  # the entry point's own flags, not only "Try --helpfull"
