"""Image-level methods: the backbone itself is trained, so they read images, not the cache.

`finetune` (pretrained backbone + new head), `scratch` (same network, random init) and
`head2toe_ft` (Head2Toe's selected features as the head's input, backbone trained end to
end), registered in `IMAGE_METHODS`. Entry points: `run_image_method` (one trial) and `run_image_protocol` (`h2t run`).
"""
from head2toe.image_methods.config import (
    DEFAULT_IMAGE_GRIDS,
    IMAGE_METHODS,
    METHOD_NAMES,
    VTAB_FT_GRID,
    VTAB_H2T_FT_GRID,
    ImageHParams,
    ImageMethod,
    TrainConfig,
)
from head2toe.image_methods.run import expand_image_grid, run_image_method, run_image_protocol

__all__ = [
    "DEFAULT_IMAGE_GRIDS", "IMAGE_METHODS", "ImageMethod", "METHOD_NAMES", "VTAB_FT_GRID", "VTAB_H2T_FT_GRID", "ImageHParams", "TrainConfig",
    "expand_image_grid", "run_image_method", "run_image_protocol",
]
