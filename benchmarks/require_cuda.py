"""Exit unless a CUDA device is visible; print which (the GPU scripts start with it)."""
import torch

assert torch.cuda.is_available(), "no CUDA device: this script is for GPU machines"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
