"""int8 GEMM and friends: plain-torch references (ref), fast CPU paths (cpu, our AVX2
C++ in int8_cpu.cpp), a Triton kernel for CUDA (triton_int8), and the torch.library
ops that choose between them (ops). Import :mod:`core.kernels.ops` to register the ops.
"""
