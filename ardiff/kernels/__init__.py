"""Hand-written accelerator kernels (Pallas), each with a reference it is tested against."""
