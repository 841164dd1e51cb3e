"""GPT-NeoX fine-tuning: plain-PyTorch model, kernels, data, checkpoints, the DeepSpeed loop and the Determined trial."""
