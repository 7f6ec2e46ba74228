"""Planning a stage before it runs: what `launch/pretrain.py --dry-run` reports (parameters by
part, the layout's per-GPU memory with the vision side, the smallest change that fits, time at a
stated MFU). It reads the per-rank byte model of aria_train.accounting and adds to it only the
vision side's activations; it never allocates memory."""
