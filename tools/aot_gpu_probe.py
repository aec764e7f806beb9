"""Deviceless GPU compilation with jax's CUDA plugin: a sharded matmul compiled for 8 H100s on a
machine without a GPU or CUDA libraries (see docs/aot.md, "GPUs the same way").

Needs the plugin, kept out of the project's virtualenv (it makes every `import jax` try CUDA):
    python -m venv /tmp/gpuvenv && /tmp/gpuvenv/bin/pip install jax==0.10.2 jaxlib==0.10.2 \
        jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 /tmp/gpuvenv/bin/python tools/aot_gpu_probe.py

The target config is a GpuTargetConfigProto in text form, written by hand from NVIDIA's H100 SXM
figures (132 SMs, 50 MiB L2, 80 GB HBM3 at 3.35 TB/s, compute capability 9.0).
"""
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
tc = """gpu_device_info { threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152 shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 minor: 0 } registers_per_core_limit: 65536 registers_per_block_limit: 65536 }
platform_name: "CUDA" dnn_version_info { major: 9 minor: 3 } device_description_str: "NVIDIA H100 80GB HBM3" """
t = topologies.get_topology_desc(platform="cuda", topology_name="h100", topology="1x1x8", target_config=tc)
mesh = Mesh(np.array(t.devices), ("x",))
s = NamedSharding(mesh, P("x"))
f = jax.jit(lambda a, b: a @ b)
try:
    low = f.lower(jax.ShapeDtypeStruct((1024, 1024), jnp.bfloat16, sharding=s), jax.ShapeDtypeStruct((1024, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P())))
    print("lowered")
    c = low.compile()
    print("compiled", c.memory_analysis(), c.cost_analysis())
except Exception as e:  # report the first line of whatever the compiler says
    print(type(e).__name__, str(e).strip().splitlines()[0][:600])
