"""openchat: clean chat data, fine-tune, serve, evaluate and chat with open LLMs."""

import glob as _glob
import os as _os

__version__ = "0.1.0"

# DeepSpeed (imported by accelerate whenever a model is saved) prints a warning on *stdout*
# when it finds no GPU, which would corrupt `--json` output. Naming the CPU accelerator up
# front keeps it quiet; machines with an NVIDIA device keep DeepSpeed's auto-detection.
if "DS_ACCELERATOR" not in _os.environ and not _glob.glob("/dev/nvidia[0-9]*"):
    _os.environ["DS_ACCELERATOR"] = "cpu"

# openchat draws its own rich progress bars; the libraries' tqdm bars would interleave with them.
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
