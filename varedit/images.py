"""Any decoded PIL image -> the 8-bit RGB image the model edits (PIL and numpy only).

`to_rgb` is the one normalisation of an input, used by `pipeline.load_image` and so by every caller of
`EditPipeline.edit` (the worker included). In order:

1. the first frame of an animation (APNG, animated WebP, GIF): an edit is of one still image;
2. the EXIF orientation, so the edit sees the picture the way a viewer shows it;
3. 16-bit and 32-bit integer greyscale ("I;16", "I;16B", "I;16L", "I") scaled to 8 bits over 0..65535
   (a plain convert clips everything above 255 to white);
4. transparency (RGBA, LA, PA, a palette or L/RGB `transparency` entry) composited onto white: the
   pipeline pads with white, so a transparent region and the pad look the same (a plain convert puts it
   on black);
5. everything else (CMYK, 1, L, P, YCbCr) through Pillow's own conversion to RGB.

No colour management: an embedded ICC profile is ignored, as it was before.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def first_frame(image: Image.Image) -> Image.Image:
    """The image at frame 0 (an animation may have been left at a later frame)."""
    if getattr(image, "n_frames", 1) > 1 and image.tell() != 0:
        image.seek(0)
    return image


def to_8bit_grey(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer greyscale image as "L", 0..65535 mapped linearly onto 0..255 (rounded).

    Mode "I" is read as 16-bit data (how Pillow may open a 16-bit PNG): values outside 0..65535 clip.
    A 16-bit `transparency` entry is dropped: no single 8-bit value stands for it.
    """
    wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8))


def onto_white(image: Image.Image) -> Image.Image:
    """An image with transparency composited onto white, as RGB (opaque pixels keep their exact colour)."""
    rgba = image.convert("RGBA")
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """The 8-bit RGB still the model sees (see the module docstring), as a new image; an animation
    passed in is left at frame 0.

    Raises ValueError for a mode Pillow cannot bring to RGB.
    """
    image = ImageOps.exif_transpose(first_frame(image))
    if image.mode in WIDE_GREY_MODES:
        image = to_8bit_grey(image)
    if image.has_transparency_data:
        return onto_white(image)
    return image.convert("RGB")


__all__ = ["first_frame", "onto_white", "to_8bit_grey", "to_rgb"]
