"""An installed (non-editable) porter finds its rules without the source tree."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_rules_and_an_installed_porter_loads_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    [wheel] = tmp_path.glob("porter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("porter/_rules/"))
    assert shipped == sorted(f"porter/_rules/{p.name}" for p in (ROOT / "rules").glob("*.toml"))

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    script = ("from porter.rules.loader import load_rules, rules_dir; import porter; "
              "print(rules_dir()); print(len(load_rules().rules)); "
              "print(porter.convert_source('import torch\\nx = torch.relu(y)\\n').code)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                            check=True)
    where, count, *code = result.stdout.splitlines()
    assert Path(where).is_relative_to(target)
    assert int(count) > 50
    assert "x = jax.nn.relu(y)" in code
