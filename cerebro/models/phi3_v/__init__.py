# Written with AI assistance; review before relying on it.
"""Native Phi-3.5-vision-instruct on transformers' Phi3 decoder and CLIP vision blocks (no remote code).

Reading order: configuration.py -> image_processing.py -> processing.py -> modeling.py -> weights.py.
"""

from cerebro.models.phi3_v.configuration import Phi3VConfig
from cerebro.models.phi3_v.image_processing import Phi3VImageProcessor, hd_layout, num_image_tokens
from cerebro.models.phi3_v.modeling import Phi3VForCausalLM, Phi3VModel
from cerebro.models.phi3_v.processing import Phi3VProcessor

__all__ = [
    "Phi3VConfig",
    "Phi3VForCausalLM",
    "Phi3VImageProcessor",
    "Phi3VModel",
    "Phi3VProcessor",
    "hd_layout",
    "num_image_tokens",
]
