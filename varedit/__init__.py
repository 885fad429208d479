"""VAREdit in plain PyTorch: instruction-guided image editing by next-scale prediction.

    from varedit import EditPipeline
    pipe = EditPipeline.from_pretrained("/models/VAREdit", variant="2B-512")
    [out] = pipe.edit([image], ["add a red hat"], seeds=[0])

Also: `write_random_checkpoint(dir, "tiny")` writes a small random model in our folder format,
`get_config(name)` returns a variant's `VAREditConfig`.
"""

from .checkpoints import CheckpointError, convert_official, write_random_checkpoint
from .config import VARIANTS, VAREditConfig, get_config
from .pipeline import EditPipeline
from .sampling import EditCancelled

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "EditCancelled",
    "EditPipeline",
    "VAREditConfig",
    "convert_official",
    "get_config",
    "write_random_checkpoint",
]
