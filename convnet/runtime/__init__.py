"""How compiled graphs run here: the backend (mode, device, precision), the Ops under JAX
and under Numba/C, the many-steps loop, the graph cache and the CPU kernels."""
