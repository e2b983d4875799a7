"""`import slimkit` must stay cheap: no CUDA initialisation and no torch.distributed process group."""
import subprocess
import sys


def test_import_does_not_initialise_cuda_or_distributed():
    code = (
        "import slimkit, slimkit.models, slimkit.profile, slimkit.compress, slimkit.comm, slimkit.train, slimkit.data\n"
        "import torch\n"
        "assert not torch.cuda.is_initialized(), 'CUDA was initialised'\n"
        "import torch.distributed as dist\n"
        "assert not (dist.is_available() and dist.is_initialized()), 'a process group was created'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_top_level_import_does_not_import_torch():
    code = "import sys, slimkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
