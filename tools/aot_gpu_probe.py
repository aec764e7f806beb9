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
except Exception as e:
    print(type(e).__name__, str(e).strip().splitlines()[0][:600])
