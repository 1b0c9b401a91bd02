"""nanoGPT's scripts set up torch's CUDA backend before anything else (issue 16): torch.cuda.manual_seed and the
tf32 flags go with a note (passes/backend_flags.py), allow_tf32 = False becomes JAX's highest matmul precision,
and torch.cuda.is_bf16_supported() asks whether JAX runs on a GPU (rule PT389)."""

import jax

from porter import convert_source

SCRIPT = '''import torch

seed = 1337
torch.manual_seed(seed)
torch.cuda.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
torch.backends.cudnn.allow_tf32 = {flag}
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float16'
x = torch.ones(3)
'''


def test_backend_flags_go_with_notes():
    conversion = convert_source(SCRIPT.replace("{flag}", "True"))
    errors = [d for d in conversion.diagnostics if d.severity.name == "ERROR"]
    assert not errors, errors
    code = conversion.code
    assert "allow_tf32" not in code and "torch.cuda.manual_seed" not in code
    assert "jax.default_backend() == 'gpu' and jax.default_backend() == 'gpu'" in code
    notes = [d for d in conversion.diagnostics if d.code == "PT007"]
    assert {d.line for d in notes} >= {5, 6, 7}
    namespace: dict = {}
    exec(compile(code, "converted.py", "exec"), namespace)
    assert namespace["dtype"] == ("bfloat16" if jax.default_backend() == "gpu" else "float16")


def test_tf32_switched_off_asks_for_full_precision():
    conversion = convert_source(SCRIPT.replace("{flag}", "False"))
    assert 'jax.config.update("jax_default_matmul_precision", "highest")' in conversion.code
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"]


def test_a_flag_set_from_a_variable_stays_reported():
    conversion = convert_source(SCRIPT.replace("{flag}", "seed > 0"))
    assert any(d.severity.name == "ERROR" and d.line == 7 for d in conversion.diagnostics)
